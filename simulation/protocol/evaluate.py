"""The evaluation harness: every model is scored through one batched path.

A scorer maps a batch of user indices to a ``(B, n_items)`` score tensor. The harness
masks each user's seen items, ranks the user's held-out items (one under leave-one-out,
several under a ratio split) over the whole catalogue (primary protocol) and among the
user's fixed sampled negatives (secondary protocol), and averages per-user metrics;
catalogue coverage counts distinct items in all top-k lists.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

from stamen.models.metrics import batch_metrics, top_k
from stamen.simulation.protocol.split import Split

__all__ = ["Scorer", "evaluate"]

Scorer = Callable[[np.ndarray], torch.Tensor]


def evaluate(
    scorer: Scorer,
    split: Split,
    *,
    stage: Literal["valid", "test"] = "test",
    ks: tuple[int, ...] = (10, 20),
    batch_size: int = 1024,
) -> dict[str, float]:
    """Mean full-ranking and sampled metrics over the evaluated users.

    ``stage="valid"`` ranks the validation items with the train items excluded (for
    tuning); ``stage="test"`` ranks the test items with train and validation items
    excluded.
    """
    users = split.evaluated
    targets = split.valid if stage == "valid" else split.test
    seen = split.seen(include_valid=stage == "test")
    sums: dict[str, float] = {}
    recommended = np.zeros(split.n_items, dtype=bool)
    with torch.no_grad():
        for start in range(0, len(users), batch_size):
            chunk = users[start : start + batch_size]
            scores = scorer(chunk).float()
            exclude = seen.select(chunk)
            per_user = batch_metrics(
                scores, targets[chunk], exclude=exclude, negatives=split.negatives[chunk], ks=ks
            )
            for name, values in per_user.items():
                sums[name] = sums.get(name, 0.0) + float(values.sum())
            ids, _ = top_k(scores, min(ks), exclude=exclude)
            recommended[ids.ravel()] = True
    n = max(len(users), 1)
    out = {name: total / n for name, total in sorted(sums.items())}
    out[f"coverage@{min(ks)}"] = float(recommended.mean())
    return out
