"""What a device answers to a private federated analytics query (batch-first).

Rows are devices: the Flower client calls these with one row, simulations may call them
with many. ``stamen.models.analytics`` describes the queries and the bound each vector
meets; the device then scales, clips and noises the vector like a training update.
"""

from __future__ import annotations

import numpy as np

__all__ = ["evaluation_vectors", "trending_vectors"]


def trending_vectors(
    rows: np.ndarray,
    items: np.ndarray,
    times: np.ndarray,
    *,
    n_devices: int,
    n_items: int,
    now: float,
    window: float,
    cap: int,
) -> np.ndarray:
    """``(n_devices, n_items)`` indicators of each device's recent items.

    ``rows``, ``items`` and ``times`` list, per device, the items whose latest event is
    positive and that event's time (seconds). An item counts when its time lies in
    ``(now - window, now]``; a device counts at most ``cap`` items, its most recent
    (ties: lower catalogue row first), so each row has at most ``cap`` ones.
    """
    if window <= 0 or cap < 1:
        raise ValueError(f"trending needs window > 0 and cap >= 1 (got {window}, {cap})")
    rows, items = np.asarray(rows, np.int64), np.asarray(items, np.int64)
    times = np.asarray(times, np.float64)
    if not (len(rows) == len(items) == len(times)):
        raise ValueError("rows, items and times must have the same length")
    recent = (times > now - window) & (times <= now)
    rows, items, times = rows[recent], items[recent], times[recent]
    order = np.lexsort((items, -times, rows))  # by device, newest first
    rows, items = rows[order], items[order]
    starts = np.searchsorted(rows, rows, side="left")
    keep = np.arange(len(rows)) - starts < cap
    out = np.zeros((n_devices, n_items))
    out[rows[keep], items[keep]] = 1.0
    return out


def evaluation_vectors(metrics: np.ndarray, evaluable: np.ndarray) -> np.ndarray:
    """``(devices, k + 1)``: ``[1, metrics]`` for each evaluable device, zeros for the
    others.

    Raises:
        ValueError: a metric of an evaluable device is not in ``[0, 1]`` (the query's
            sensitivity assumes it is; clipping it would hide the error).
    """
    metrics = np.asarray(metrics, np.float64)
    evaluable = np.asarray(evaluable, bool)
    bad = evaluable[:, None] & ~((metrics >= 0) & (metrics <= 1))
    if bad.any():
        row, column = map(int, np.argwhere(bad)[0])
        value = metrics[row, column]
        raise ValueError(f"metric {column} of device row {row} is {value}, not in [0, 1]")
    out = np.zeros((len(metrics), metrics.shape[1] + 1))
    out[evaluable, 0] = 1.0
    out[evaluable, 1:] = metrics[evaluable]
    return out
