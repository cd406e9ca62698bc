"""Private federated analytics: the queries a device answers with one bounded vector.

Each sampled device computes a vector on itself whose entries lie in ``[0, 1]`` with at
most ``width`` of them non-zero, so its L2 norm is at most ``sqrt(width)``. It is scaled
by ``clip_norm / sqrt(width)`` (:func:`query_scale`) to a norm of at most ``clip_norm``,
clipped all the same, noised (distributed DP: each device adds its share), and summed
under SecAgg+; the server divides the (noisy) sum by the scale again. One person then
changes the sum by at most ``clip_norm``, which is what the Gaussian mechanism's
accounting assumes, and the server learns nothing but the noisy sum.

The queries (:data:`QUERIES`):

- ``trending``: per catalogue row, 1 where the item's latest event on the device is
  positive and falls inside the window ``(now - window, now]``, for at most ``cap`` of
  the most recent such items (``width = cap``); the sum counts devices per item;
- ``evaluation``: ``[1, m_1, …, m_k]`` for a device holding held-out items (its own
  ranking metrics, each in ``[0, 1]``), zeros otherwise (``width = k + 1``); the sum's
  first entry counts evaluating devices and the others sum their metrics.

``stamen.client.flower.analytics`` computes the vectors (batch-first); ``stamen.server.analytics``
asks for them and decodes the sums.
"""

from __future__ import annotations

import math

__all__ = [
    "EVALUATION",
    "QUERIES",
    "TRENDING",
    "metric_names_from_config",
    "query_scale",
]

TRENDING = "trending"
EVALUATION = "evaluation"
#: The queries a device answers.
QUERIES = (TRENDING, EVALUATION)


def query_scale(*, width: int, clip_norm: float) -> float:
    """The factor a query's vector is multiplied by on the device (and its sum divided
    by on the server): entries in ``[0, 1]``, at most ``width`` of them non-zero, then
    have a norm of at most ``clip_norm``."""
    if width < 1:
        raise ValueError(f"a query's width must be at least 1 (got {width})")
    return clip_norm / math.sqrt(width)


def metric_names_from_config(value: str) -> tuple[str, ...]:
    """The metric names an ``evaluation`` query lists (comma-separated in the config)."""
    names = tuple(name for name in value.split(",") if name)
    if not names:
        raise ValueError("an evaluation query names no metrics")
    return names
