"""The exact ``ials`` user solve (``stamen.models.mf.ials.IALSSolver``) against a dense,
user-by-user reference: whatever the order its batches take the users in."""

from __future__ import annotations

import numpy as np
import pytest

from stamen.models.batches import UserItems
from stamen.models.mf.ials import IALSSolver
from stamen.models.quantize import ItemTable


def _heavy_tailed(rng: np.random.Generator, users: int, items: int) -> UserItems:
    sizes = np.minimum(rng.zipf(1.6, users) - 1, items)  # many 0s and 1s, a few long rows
    rows = [np.sort(rng.choice(items, size, replace=False)) for size in sizes]
    indptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return UserItems(indptr=indptr, items=np.concatenate(rows).astype(np.int64), n_items=items)


@pytest.mark.parametrize("batch_size", [1, 7, 256])
def test_each_factor_solves_its_own_normal_equations(batch_size: int) -> None:
    rng = np.random.default_rng(0)
    n_items, dim, alpha, l2 = 40, 5, 2.0, 0.3
    data = _heavy_tailed(rng, users=60, items=n_items)
    q = rng.normal(0, 0.5, (n_items, dim)).astype(np.float32)
    b = rng.normal(0, 0.2, n_items).astype(np.float32)
    solver = IALSSolver.build(ItemTable.dense(q), b, alpha=alpha, l2=l2, block=16)
    factors = solver.solve(data, batch_size=batch_size)
    q64, b64 = q.astype(np.float64), b.astype(np.float64)
    for u in range(data.n_users):
        # minimise Σ_i c_ui (t_ui - p·q_i - b_i)² + l2 |p|², c = 1 + alpha t
        target = np.zeros(n_items)
        target[data.row(u)] = 1.0
        conf = 1.0 + alpha * target
        lhs = (q64 * conf[:, None]).T @ q64 + l2 * np.eye(dim)
        rhs = q64.T @ (conf * (target - b64))
        np.testing.assert_allclose(factors[u], np.linalg.solve(lhs, rhs), rtol=1e-4, atol=1e-5)
