"""Ranking metrics against hand-computed cases and a slow per-user reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.models.batches import UserItems
from stamen.models.metrics import batch_metrics, full_ranks, ranking_metrics, sampled_ranks, top_k


def test_hand_computed_full_ranking() -> None:
    # user 0: item 3 is the target; items 0 and 1 are seen (excluded).
    # scores: item0 9 (excluded), item1 8 (excluded), item2 5, item3 4, item4 1 -> rank 1
    # user 1: target item 0 scores lowest of the unexcluded five items -> rank 4
    scores = torch.tensor([[9.0, 8.0, 5.0, 4.0, 1.0], [0.0, 1.0, 2.0, 3.0, 4.0]])
    exclude = UserItems(indptr=np.array([0, 2, 2]), items=np.array([0, 1]), n_items=5)
    ranks = full_ranks(scores, np.array([3, 0]), exclude=exclude)
    assert ranks[:, 0].tolist() == [1, 4]
    m = ranking_metrics(ranks, ks=(2, 10))
    assert m["hr@2"].tolist() == [1.0, 0.0]
    assert m["ndcg@2"][0] == pytest.approx(1 / math.log2(3))
    assert m["ndcg@10"][1] == pytest.approx(1 / math.log2(6))
    assert m["recall@10"].tolist() == [1.0, 1.0]


def test_hand_computed_sampled_and_multi_target() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7]])
    assert sampled_ranks(scores, np.array([2]), np.array([[0, 1, 3]])).tolist() == [2]
    # two targets at ranks 0 and 3 with k=2: one hit; ideal DCG for 2 targets
    m = ranking_metrics(np.array([[0, 3]]), ks=(2,))
    assert m["recall@2"][0] == pytest.approx(0.5)
    assert m["ndcg@2"][0] == pytest.approx(1.0 / (1.0 + 1 / math.log2(3)))
    assert m["hr@2"][0] == 1.0


def test_top_k_masks_excluded_items() -> None:
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0]])
    ids, _ = top_k(scores, 2, exclude=UserItems.single(np.array([0]), n_items=4))
    assert ids.tolist() == [[1, 2]]


def _slow_reference(
    scores: np.ndarray, seen: list[set[int]], targets: np.ndarray, k: int
) -> tuple[float, float]:
    hr = ndcg = 0.0
    for u, target in enumerate(targets):
        ranked = [i for i in np.argsort(-scores[u], kind="stable") if i not in seen[u]]
        pos = ranked.index(target)
        if pos < k:
            hr += 1
            ndcg += 1 / math.log2(pos + 2)
    return hr / len(targets), ndcg / len(targets)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n_users=st.integers(1, 12), n_items=st.integers(12, 40))
def test_batched_metrics_match_slow_reference(seed: int, n_users: int, n_items: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.permutation(n_users * n_items).reshape(n_users, n_items).astype(np.float32)
    seen_sets, users, items, targets = [], [], [], []
    for u in range(n_users):
        chosen = rng.choice(n_items, size=rng.integers(1, n_items // 2), replace=False)
        seen_sets.append(set(chosen[1:].tolist()))
        targets.append(int(chosen[0]))
        users += [u] * (len(chosen) - 1)
        items += chosen[1:].tolist()
    exclude = UserItems.from_pairs(
        np.array(users, np.int64), np.array(items, np.int64), n_users=n_users, n_items=n_items
    )
    out = batch_metrics(torch.from_numpy(scores), np.array(targets), exclude=exclude, ks=(5,))
    hr, ndcg = _slow_reference(scores, seen_sets, np.array(targets), 5)
    assert out["hr@5"].mean() == pytest.approx(hr)
    assert out["ndcg@5"].mean() == pytest.approx(ndcg)


def test_hand_computed_precision_map_and_mrr() -> None:
    # one target per user, at ranks 0, 3 and 15 (0-based), cut-off 10
    m = ranking_metrics(np.array([0, 3, 15]), ks=(10,))
    assert m["precision@10"].tolist() == pytest.approx([0.1, 0.1, 0.0])
    assert m["map@10"].tolist() == pytest.approx([1.0, 0.25, 0.0])  # MRR cut at 10
    assert m["mrr"].tolist() == pytest.approx([1.0, 0.25, 1 / 16])
    # targets at ranks 2 and 0 (given out of order) and a padded slot, cut-off 3:
    # AP = (1/1 + 2/3) / 2; one user with no target scores 0 everywhere
    m = ranking_metrics(np.array([[2, 0, -1], [-1, -1, -1]]), ks=(3,))
    assert m["precision@3"].tolist() == pytest.approx([2 / 3, 0.0])
    assert m["map@3"].tolist() == pytest.approx([(1 + 2 / 3) / 2, 0.0])
    assert m["mrr"].tolist() == pytest.approx([1.0, 0.0])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=5, unique=True), st.integers(1, 12))
def test_map_matches_a_slow_average_precision(ranks: list[int], k: int) -> None:
    hits, total = 0, 0.0
    for position in range(k):  # walk the top k: a target at each of its ranks
        if position in ranks:
            hits += 1
            total += hits / (position + 1)
    expected = total / min(len(ranks), k)
    got = ranking_metrics(np.array([ranks]), ks=(k,))
    assert got[f"map@{k}"][0] == pytest.approx(expected)
    assert got["mrr"][0] == pytest.approx(1 / (min(ranks) + 1))


def test_targets_with_equal_scores_take_successive_places() -> None:
    # items 1 and 3 (the targets) tie, below item 0 and above item 2 and the negative 4
    scores = torch.tensor([[3.0, 2.0, 1.0, 2.0, 0.0]])
    targets = np.array([[3, 1, -1]])
    exclude = UserItems(indptr=np.array([0, 0]), items=np.array([], np.int64), n_items=5)
    assert full_ranks(scores, targets, exclude=exclude).tolist() == [[1, 2, -1]]
    assert sampled_ranks(scores, targets, np.array([[4, 0]])).tolist() == [[1, 2, -1]]
    m = ranking_metrics(full_ranks(scores, targets, exclude=exclude), ks=(3,))
    assert m["ndcg@3"][0] == pytest.approx(
        (1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    )
    assert m["map@3"][0] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_sampled_ranks_place_each_target_among_the_negatives_and_the_other_targets() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.3], [0.4, 0.3, 0.2, 0.1, 0.0]])
    # row 0: targets 2 (0.5) and 3 (0.7) among negatives 1 (0.9) and 0 (0.1); row 1: one target
    ranks = sampled_ranks(scores, np.array([[2, 3], [4, -1]]), np.array([[1, 0], [0, 1]]))
    assert ranks.tolist() == [[2, 1], [2, -1]]
