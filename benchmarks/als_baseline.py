"""implicit's ALS, tuned on the validation items, under Stamen's protocol (benchmark only:
``implicit`` is not a runtime dependency)."""

from __future__ import annotations

import itertools

import numpy as np
import scipy.sparse as sp
import torch
from threadpoolctl import threadpool_limits

from stamen.simulation.protocol.evaluate import evaluate
from stamen.simulation.protocol.split import Split

GRID = {
    "factors": (32, 64, 128),
    "regularization": (0.01, 0.1, 1.0, 10.0),
    "alpha": (1.0, 5.0, 20.0, 40.0),
}
ITERATIONS = 15


def _fit(split: Split, factors: int, regularization: float, alpha: float, seed: int):
    from implicit.cpu.als import AlternatingLeastSquares

    users, items = split.train.pairs()
    matrix = sp.csr_matrix(
        (np.ones(len(items), np.float32), (users, items)), shape=(split.n_users, split.n_items)
    )
    model = AlternatingLeastSquares(
        factors=factors,
        regularization=regularization,
        alpha=alpha,
        iterations=ITERATIONS,
        random_state=seed,
    )
    with threadpool_limits(1, "blas"):
        model.fit(matrix, show_progress=False)
    u = torch.from_numpy(np.asarray(model.user_factors))
    v = torch.from_numpy(np.asarray(model.item_factors))
    return lambda batch: u[torch.from_numpy(np.asarray(batch, np.int64))] @ v.T


def tuned_als(split: Split, *, seed: int) -> dict:
    """Grid-search ALS on validation NDCG@10; return the best setting and its test metrics."""
    best = None
    for factors, reg, alpha in itertools.product(*GRID.values()):
        scorer = _fit(split, factors, reg, alpha, seed)
        valid = evaluate(scorer, split, stage="valid")["ndcg@10"]
        if best is None or valid > best[0]:
            best = (
                valid,
                {
                    "factors": factors,
                    "regularization": reg,
                    "alpha": alpha,
                    "iterations": ITERATIONS,
                },
            )
    assert best is not None
    scorer = _fit(split, **{k: v for k, v in best[1].items() if k != "iterations"}, seed=seed)
    return {"params": best[1], "valid_ndcg@10": best[0], "test": evaluate(scorer, split)}
