"""The exact ``ials`` user solve against a frozen item side (numpy only).

What a device runs on every event to re-solve its user factor (``MFModel.serving``), and
what the training code (``stamen.models.training.solve_users``), the private ALS baseline
and the device's ALS statistics build on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stamen.models.batches import UserItems
from stamen.models.quantize import ItemTable

__all__ = ["IALSSolver"]


@dataclass(frozen=True, eq=False)
class IALSSolver:
    """The exact ``ials`` user solve against a frozen item side, batch-first.

    The user factor minimising the ``ials`` loss is the solution of ``(QᵀQ + alpha
    Q_uᵀQ_u + l2 I) p_u = -Qᵀb + Σ_{i∈u}(1 + alpha - alpha b_i) q_i``. Everything but
    the user's own rows is fixed by the item side, so :meth:`build` computes ``QᵀQ +
    l2 I`` and ``-Qᵀb`` once (in float64, a block of rows at a time) and :meth:`solve`
    then costs one small ``dim x dim`` system per user: what a device pays per event.
    """

    table: ItemTable
    bias: np.ndarray
    gram: np.ndarray
    base: np.ndarray
    alpha: float

    @classmethod
    def build(
        cls, table: ItemTable, bias: np.ndarray, *, alpha: float, l2: float, block: int = 65536
    ) -> IALSSolver:
        """Precompute the item side's part of the system (see class docstring): each
        block of rows in float32 (the table's precision; single-precision BLAS, twice the
        speed at a million items), the blocks summed in float64."""
        dim = table.dim
        gram = l2 * np.eye(dim)
        base = np.zeros(dim)
        single = np.asarray(bias, np.float32)
        for start in range(0, len(table), block):
            rows = table.rows(np.arange(start, min(start + block, len(table))))
            gram += rows.T @ rows
            base -= rows.T @ single[start : start + len(rows)]
        return cls(
            table=table, bias=np.asarray(bias, np.float64), gram=gram, base=base, alpha=alpha
        )

    def solve(self, data: UserItems, *, batch_size: int = 256) -> np.ndarray:
        """The factor ``(n_users, dim)`` (float32) of every row of ``data``. Users are
        batched in order of their item count, so that a batch's padding to its longest
        row stays short (counts are heavy-tailed: a few long rows would otherwise widen
        every batch they fall in)."""
        out = np.zeros((data.n_users, self.table.dim), np.float32)
        order = np.argsort(data.counts(), kind="stable")
        for start in range(0, data.n_users, batch_size):
            users = order[start : start + batch_size]
            sub = data.select(users)
            counts = sub.counts()
            width = max(int(counts.max()) if len(counts) else 0, 1)
            rows, items = sub.pairs()
            slots = np.arange(len(items)) - np.repeat(sub.indptr[:-1], counts)
            padded = np.zeros((len(users), width, self.table.dim))
            weights = np.zeros((len(users), width))
            padded[rows, slots] = self.table.rows(items)
            weights[rows, slots] = 1.0 + self.alpha - self.alpha * self.bias[items]
            lhs = self.gram + self.alpha * padded.transpose(0, 2, 1) @ padded
            rhs = self.base + np.einsum("uw,uwd->ud", weights, padded)
            out[users] = np.linalg.solve(lhs, rhs[:, :, None])[:, :, 0]
        return out
