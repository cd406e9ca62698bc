"""Batched top-k and ranking metrics (no per-user Python loop).

Ranks are 0-based positions among the candidate items: every catalogue item not excluded
for that user (full ranking), or the held-out item against its fixed sampled negatives
(sampled protocol). A target's rank counts the candidates scoring strictly higher.
"""

from __future__ import annotations

import numpy as np
import torch

from stamen.models.batches import UserItems

__all__ = ["batch_metrics", "full_ranks", "ranking_metrics", "sampled_ranks", "top_k"]


def _masked(scores: torch.Tensor, exclude: UserItems) -> torch.Tensor:
    if exclude.n_users != scores.shape[0]:
        raise ValueError("exclude must have one row per score row")
    users, items = exclude.pairs()
    out = scores.clone()
    out[torch.from_numpy(users), torch.from_numpy(items)] = -torch.inf
    return out


def top_k(
    scores: torch.Tensor, k: int, *, exclude: UserItems | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Ids and scores ``(B, k)`` of the best items per row, ``exclude`` masked out."""
    if exclude is not None:
        scores = _masked(scores, exclude)
    k = min(k, scores.shape[1])
    values, ids = torch.topk(scores, k, dim=1)
    return ids.numpy(), values.numpy()


def full_ranks(scores: torch.Tensor, targets: np.ndarray, *, exclude: UserItems) -> np.ndarray:
    """Rank ``(B, T)`` of each target among all non-excluded items; -1 where the target
    slot is padding (target id -1)."""
    targets = np.atleast_2d(np.asarray(targets, np.int64).T).T
    masked = _masked(scores, exclude)
    valid = torch.from_numpy(targets >= 0)
    t = torch.from_numpy(np.where(targets >= 0, targets, 0))
    target_scores = scores.gather(1, t)
    ranks = (masked[:, None, :] > target_scores[:, :, None]).sum(-1)
    return torch.where(valid, ranks, -1).numpy()


def sampled_ranks(scores: torch.Tensor, targets: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """Rank ``(B,)`` of each target among its own sampled negatives ``(B, n_neg)``."""
    t = torch.from_numpy(np.asarray(targets, np.int64))[:, None]
    neg_scores = scores.gather(1, torch.from_numpy(np.asarray(negatives, np.int64)))
    return (neg_scores > scores.gather(1, t)).sum(1).numpy()


def ranking_metrics(ranks: np.ndarray, ks: tuple[int, ...] = (10, 20)) -> dict[str, np.ndarray]:
    """Per-user HR@k, NDCG@k, recall@k, precision@k, MAP@k and MRR from target ranks
    (0-based) ``(B,)`` or ``(B, T)``.

    With several targets per user (padding -1), HR@k is 1 if any target is in the top k,
    recall@k the share of targets there, precision@k the share of the top k that are
    targets, NDCG@k the DCG over targets divided by the ideal DCG, MAP@k the average
    precision at each target in the top k divided by ``min(targets, k)``, and MRR the
    reciprocal of the best target's position (no cut-off). With one held-out item per
    user recall@k equals HR@k, and MAP@k is MRR cut at k.
    """
    ranks = np.asarray(ranks)
    if ranks.ndim == 1:
        ranks = ranks[:, None]
    valid = ranks >= 0
    n_targets = valid.sum(1)
    # each user's targets best first (padding last), and each one's place among them
    ordered = np.sort(np.where(valid, ranks, np.iinfo(np.int64).max), axis=1)
    place = np.arange(1, ordered.shape[1] + 1)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        hit = valid & (ranks < k)
        gains = np.where(hit, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)
        discounts = 1.0 / np.log2(np.arange(k) + 2.0)
        ideal = np.cumsum(discounts)[np.clip(np.minimum(n_targets, k) - 1, 0, None)]
        out[f"hr@{k}"] = np.asarray(hit.any(1), np.float64)
        out[f"ndcg@{k}"] = np.where(n_targets > 0, gains.sum(1) / ideal, 0.0)
        out[f"recall@{k}"] = np.where(n_targets > 0, hit.sum(1) / np.maximum(n_targets, 1), 0.0)
        out[f"precision@{k}"] = hit.sum(1) / k
        in_top = ordered < k
        precisions = np.where(in_top, place / (np.where(in_top, ordered, 0) + 1.0), 0.0)
        out[f"map@{k}"] = precisions.sum(1) / np.maximum(np.minimum(n_targets, k), 1)
    best = ordered[:, 0]
    out["mrr"] = np.where(n_targets > 0, 1.0 / (np.where(n_targets > 0, best, 0) + 1.0), 0.0)
    return out


_SAMPLED = ("hr@", "ndcg@")  # the sampled protocol's metrics


def batch_metrics(
    scores: torch.Tensor,
    targets: np.ndarray,
    *,
    exclude: UserItems,
    negatives: np.ndarray | None = None,
    ks: tuple[int, ...] = (10, 20),
) -> dict[str, np.ndarray]:
    """Per-user metrics for a batch: full ranking (:func:`ranking_metrics`: ``hr@k``,
    ``ndcg@k``, ``recall@k``, ``precision@k``, ``map@k``, ``mrr``) and, with ``negatives``,
    the sampled protocol (``sampled_hr@k``, ``sampled_ndcg@k``).
    The evaluation harness and every device call this one function."""
    out = ranking_metrics(full_ranks(scores, targets, exclude=exclude), ks)
    if negatives is not None:
        sampled = ranking_metrics(sampled_ranks(scores, targets, negatives), ks)
        out.update({f"sampled_{k}": v for k, v in sampled.items() if k.startswith(_SAMPLED)})
    return out
