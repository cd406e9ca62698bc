"""The evaluation harness on several held-out items per user: a hand-computed case."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stamen.models.batches import UserItems
from stamen.simulation.protocol.evaluate import evaluate
from stamen.simulation.protocol.split import Split

# 9 items. User 0 trains on item 0, validates on 1 and 2, is tested on 3 and 4, and has
# sampled negatives 5, 6, 7; user 1 has one item per stage (padding -1); user 2 trains only.
SPLIT = Split(
    train=UserItems(indptr=np.array([0, 1, 2, 4]), items=np.array([0, 5, 0, 1]), n_items=9),
    valid=np.array([[1, 2], [6, -1], [-1, -1]]),
    test=np.array([[3, 4], [7, -1], [-1, -1]]),
    negatives=np.array([[5, 6, 7], [0, 1, 2], [-1, -1, -1]]),
    seed=0,
)
SCORES = torch.tensor(
    [
        # item 8 (neither held out nor a negative) scores highest
        [9.0, 8.0, 7.0, 5.0, 2.0, 6.0, 3.0, 1.0, 10.0],
        [0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, 5.0, -8.0],
        [0.0] * 9,
    ]
)
IDEAL_2 = 1 + 1 / math.log2(3)  # the ideal DCG of two targets


def _scorer(users: np.ndarray) -> torch.Tensor:
    return SCORES[torch.from_numpy(users)]


def test_several_test_items_per_user_give_the_hand_computed_metrics() -> None:
    got = evaluate(_scorer, SPLIT, stage="test", ks=(2, 5))
    # user 0, train and validation items excluded: 8 (10), 5 (6), 3 (5), 6 (3), 4 (2), 7 (1)
    # so its test items rank 2 and 4; among its negatives and each other, 1 and 3.
    # user 1: item 7 first (rank 0) in both lists.
    user0_ndcg5 = (1 / math.log2(4) + 1 / math.log2(6)) / IDEAL_2
    expected = {
        "hr@2": (0 + 1) / 2,
        "ndcg@2": (0 + 1) / 2,
        "recall@2": (0 + 1) / 2,
        "precision@2": (0 + 1 / 2) / 2,
        "map@2": (0 + 1) / 2,
        "hr@5": 1.0,
        "ndcg@5": (user0_ndcg5 + 1) / 2,
        "recall@5": 1.0,
        "precision@5": (2 / 5 + 1 / 5) / 2,
        "map@5": ((1 / 3 + 2 / 5) / 2 + 1) / 2,
        "mrr": (1 / 3 + 1) / 2,
        "sampled_hr@2": 1.0,
        "sampled_ndcg@2": (1 / math.log2(3) / IDEAL_2 + 1) / 2,
        "sampled_hr@5": 1.0,
        "sampled_ndcg@5": ((1 / math.log2(3) + 1 / math.log2(5)) / IDEAL_2 + 1) / 2,
        # top 2: user 0's 8 and 5, user 1's 7 and 0
        "coverage@2": 4 / 9,
    }
    assert got == pytest.approx(expected, abs=1e-12)


def test_the_validation_stage_ranks_every_validation_item_with_train_items_excluded() -> None:
    got = evaluate(_scorer, SPLIT, stage="valid", ks=(2,))
    # user 0: 8 (10), 1 (8), 2 (7), …: ranks 1 and 2 (test items compete);
    # user 1: 7, 0, 1, 2, 3, 4 above item 6: rank 6
    assert got["hr@2"] == pytest.approx(1 / 2)
    assert got["recall@2"] == pytest.approx(1 / 4)
    assert got["mrr"] == pytest.approx((1 / 2 + 1 / 7) / 2)
