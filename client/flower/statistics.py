"""What a device contributes to private sufficient statistics (batch-first).

Two private server algorithms sum per-device vectors through SecAgg+ and add Gaussian
noise to the sum; this module computes those vectors, each bounded in L2 norm so that one
person's whole contribution has a known sensitivity:

- **item counts** (DP popularity, and the head items of private ALS): the person's items
  each weighted ``1 / sqrt(n)``, so the vector has norm exactly 1 whatever ``n``;
- **ALS statistics** (private ALS, Chien et al., ICML 2021): with the person's user factor
  ``p`` clipped to ``user_clip`` and ``p̃ = [p, 1]``, the global Gram contribution
  ``p̃ p̃ᵀ``, and for each of the person's head items, weighted so that the squared weights
  sum to at most ``cap``, the per-item Gram ``p̃ p̃ᵀ`` (optional) and right-hand side
  ``p̃``. Its norm is at most
  :func:`als_sensitivity` (``p̃``'s last coordinate 1 makes ``r_i``'s last entry the
  item's count, so the statistics carry the popularity signal, the item bias).

Rows of ``data`` are devices; the Flower client calls these with one row, simulations with
many.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from stamen.models.als.layout import ALSLayout, als_sensitivity
from stamen.models.batches import UserItems
from stamen.models.mf.ials import IALSSolver
from stamen.models.quantize import ItemTable
from stamen.privacy import clip_update

__all__ = ["als_statistics", "als_upload", "item_counts"]


def item_counts(data: UserItems) -> np.ndarray:
    """``(devices, n_items)``: each device's items weighted ``1 / sqrt(n)`` (norm 1; a
    device without items contributes zeros)."""
    out = np.zeros((data.n_users, data.n_items))
    rows, items = data.pairs()
    counts = data.counts()
    out[rows, items] = 1.0 / np.sqrt(counts[rows])
    return out


def _weights(data: UserItems, cap: int) -> np.ndarray:
    """Per-pair weight ``min(1, sqrt(cap / n))`` (``n`` the device's head items), so each
    device's squared weights sum to at most ``cap`` (Krichene et al., ICML 2023, weight
    heavy users down rather than drop their items)."""
    counts = data.counts().astype(np.float64)
    per_device = np.minimum(1.0, np.sqrt(cap / np.maximum(counts, 1.0)))
    return np.repeat(per_device, data.counts())


def als_statistics(
    factors: np.ndarray, data: UserItems, layout: ALSLayout, *, user_clip: float, cap: int
) -> np.ndarray:
    """``(devices, layout.size)``: each device's ALS statistics (module docstring) for its
    user factor ``factors[u]`` and head items among ``data.row(u)``, clipped to
    :func:`als_sensitivity` (a bound they meet by construction; clipping makes it hold
    whatever the inputs)."""
    n = data.n_users
    slot = np.full(data.n_items, -1, np.int64)
    slot[layout.head] = np.arange(len(layout.head))
    rows, items = data.pairs()
    keep = slot[items] >= 0
    head_items = UserItems.from_pairs(
        rows[keep], slot[items[keep]], n_users=n, n_items=len(layout.head)
    )
    norms = np.linalg.norm(factors, axis=1, keepdims=True)
    p = factors * np.minimum(1.0, user_clip / np.maximum(norms, 1e-12))
    pt = np.concatenate([p, np.ones((n, 1))], axis=1)
    members = np.zeros((n, len(layout.head)))
    pair_rows, pair_slots = head_items.pairs()
    members[pair_rows, pair_slots] = _weights(head_items, cap)
    out = np.zeros((n, layout.size))
    gram, grams, rhs = layout.split(out)
    outer = pt[:, :, None] * pt[:, None, :]
    gram[:] = outer
    if grams is not None:
        grams[:] = members[:, :, None, None] * outer[:, None]
    rhs[:] = members[:, :, None] * pt[:, None, :]
    bound = als_sensitivity(user_clip=user_clip, cap=cap, item_grams=layout.item_grams)
    for u in range(n):
        out[u] = clip_update([out[u]], max_norm=bound)[0][0]
    return out


def als_upload(
    parameters: list[np.ndarray], items: np.ndarray, settings: Mapping[str, Any], *, counts: bool
) -> list[np.ndarray]:
    """What one device sends in a private ALS round: its :func:`item_counts` vector
    (``counts``), or its user factor solved exactly against the item side ``parameters``
    (factors, biases) and its :func:`als_statistics` (with ``settings``' ``als-head`` the
    head rows as int64 bytes)."""
    table, bias = parameters
    data = UserItems.single(np.asarray(items, np.int64), n_items=len(bias))
    if counts:
        return [item_counts(data)[0]]
    layout = ALSLayout(
        dim=table.shape[1],
        head=np.frombuffer(settings["als-head"], np.int64),
        item_grams=bool(settings["als-item-grams"]),
    )
    alpha, l2 = float(settings["als-alpha"]), float(settings["als-user-l2"])
    solver = IALSSolver.build(ItemTable.dense(table), bias, alpha=alpha, l2=l2)
    factor = solver.solve(data).astype(np.float64)
    stats = als_statistics(
        factor,
        data,
        layout,
        user_clip=float(settings["als-user-clip"]),
        cap=int(settings["als-cap"]),
    )
    return [stats[0]]
