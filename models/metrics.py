"""Batched top-k and ranking metrics (no per-user Python loop).

Ranks are 0-based positions in one list per user: the user's targets (held-out items)
among every catalogue item not excluded for that user (full ranking), or among the user's
fixed sampled negatives (sampled protocol). A target's rank counts the other candidates
scoring strictly higher, and the user's other targets placed before it: those scoring
higher, and of those scoring the same, the earlier ones (so two targets never share a
place, and with one target per user its rank counts the candidates scoring higher).
"""

from __future__ import annotations

import numpy as np
import torch

from stamen.models.batches import UserItems

__all__ = [
    "batch_metrics",
    "full_ranks",
    "ranking_metrics",
    "sampled_ranks",
    "target_nll",
    "top_k",
]


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


def _as_rows(targets: np.ndarray) -> np.ndarray:
    """Targets as ``(B, T)`` (a ``(B,)`` array is one target per row)."""
    targets = np.asarray(targets, np.int64)
    return targets[:, None] if targets.ndim == 1 else targets


def _places_among_targets(target_scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``(B, T)``: how many of the row's targets come before each one, best score first,
    ties in target order, padding last."""
    by_score = torch.sort(target_scores, dim=1, descending=True, stable=True).indices
    padding_last = torch.sort((~valid.gather(1, by_score)).to(torch.int8), dim=1, stable=True)
    order = by_score.gather(1, padding_last.indices)
    places = torch.empty_like(order)
    return places.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order))


def _ranks(candidates: torch.Tensor, scores: torch.Tensor, targets: np.ndarray) -> np.ndarray:
    """Ranks ``(B, T)`` of ``targets`` (padding -1) scored in ``scores`` among
    ``candidates`` ``(B, C)`` (which exclude the targets) and the row's other targets."""
    valid = torch.from_numpy(targets >= 0)
    target_scores = scores.gather(1, torch.from_numpy(np.where(targets >= 0, targets, 0)))
    ordered = torch.sort(candidates, dim=1).values
    above = candidates.shape[1] - torch.searchsorted(ordered, target_scores, right=True)
    ranks = above + _places_among_targets(target_scores, valid)
    return torch.where(valid, ranks, -1).numpy()


def full_ranks(scores: torch.Tensor, targets: np.ndarray, *, exclude: UserItems) -> np.ndarray:
    """Rank ``(B, T)`` of each target (``(B,)`` or ``(B, T)``, padding -1) among all
    non-excluded items and the row's other targets; -1 where the target slot is padding."""
    targets = _as_rows(targets)
    candidates = _masked(scores, exclude)
    rows, slots = np.nonzero(targets >= 0)
    candidates[torch.from_numpy(rows), torch.from_numpy(targets[rows, slots])] = -torch.inf
    return _ranks(candidates, scores, targets)


def sampled_ranks(scores: torch.Tensor, targets: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """Rank of each target (``(B,)`` or ``(B, T)``, padding -1; the ranks have its shape)
    among its row's sampled negatives ``(B, n_neg)`` and the row's other targets."""
    rows = _as_rows(targets)
    candidates = scores.gather(1, torch.from_numpy(np.asarray(negatives, np.int64)))
    ranks = _ranks(candidates, scores, rows)
    return ranks.reshape(np.shape(targets))


def target_nll(scores: torch.Tensor, targets: np.ndarray) -> torch.Tensor:
    """Each row's negative log-softmax of its targets over all items ``(B,)``: the mean
    over the row's targets (``(B,)`` or ``(B, T)``, padding -1, one at least per row)."""
    targets = _as_rows(targets)
    valid = torch.from_numpy(targets >= 0)
    picked = scores.gather(1, torch.from_numpy(np.where(targets >= 0, targets, 0)))
    nll = torch.where(valid, torch.logsumexp(scores, 1, keepdim=True) - picked, 0.0)
    return nll.sum(1) / valid.sum(1)


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
