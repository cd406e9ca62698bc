"""The retrieval loss of the two-tower model, kept apart from the model (which only
returns embeddings): softmax cross-entropy of each example's target item against
candidates, with the log-Q correction.

Sampled softmax (Jean et al. 2015; Yi et al., RecSys 2019, for in-batch negatives) scores
each example's target against a set of candidates: catalogue negatives drawn from a
proposal ``Q`` and, optionally, the other examples' targets (in-batch negatives, which
arrive in proportion to their frequency). Either way the candidates are not uniform, so
every logit, the target's included, is corrected by ``- log Q(item)`` (``Q`` the expected
number of times the item is drawn as a candidate), which makes the sampled loss an
unbiased-in-the-limit estimate of the full softmax. A candidate equal to the example's
target (an accidental hit) is masked. :func:`full_softmax_loss` is the exact loss, for
catalogues small enough to score whole.
"""

from __future__ import annotations

import torch

__all__ = ["full_softmax_loss", "sampled_softmax_loss"]

#: Logit given to masked candidates (finite, so an all-masked row stays finite).
_MASKED = -1e9


def full_softmax_loss(
    users: torch.Tensor,
    item_embeddings: torch.Tensor,
    item_bias: torch.Tensor,
    targets: torch.Tensor,
    example_mask: torch.Tensor,
) -> torch.Tensor:
    """Mean over the valid examples of ``logsumexp_j s_j - s_target`` with ``s = U Vᵀ + b``.

    Shapes: ``users (E, d)``, ``item_embeddings (n, d)``, ``item_bias (n,)``, ``targets
    (E,)``, ``example_mask (E,)`` (1 for a real example, 0 for padding).
    """
    logits = users @ item_embeddings.T + item_bias
    target = logits.gather(1, targets[:, None])[:, 0]
    per_example = torch.logsumexp(logits, dim=1) - target
    return (per_example * example_mask).sum() / example_mask.sum().clamp_min(1.0)


def sampled_softmax_loss(
    users: torch.Tensor,
    target_embeddings: torch.Tensor,
    target_bias: torch.Tensor,
    target_log_q: torch.Tensor,
    targets: torch.Tensor,
    example_mask: torch.Tensor,
    negative_embeddings: torch.Tensor,
    negative_bias: torch.Tensor,
    negative_log_q: torch.Tensor,
    negatives: torch.Tensor,
    *,
    in_batch: bool,
) -> torch.Tensor:
    """Mean over the valid examples of the corrected sampled softmax (module docstring).

    Shapes: ``users``, ``target_embeddings (E, d)``; ``target_bias``, ``target_log_q``,
    ``targets``, ``example_mask (E,)``; ``negative_embeddings (N, d)``; ``negative_bias``,
    ``negative_log_q``, ``negatives (N,)``. With ``in_batch`` the valid examples' targets
    are candidates for every other example too (their ``log Q`` is ``target_log_q``).
    """
    positive = (users * target_embeddings).sum(-1) + target_bias - target_log_q
    sampled = users @ negative_embeddings.T + negative_bias - negative_log_q
    sampled = torch.where(targets[:, None] == negatives[None, :], _MASKED, sampled)
    columns = [positive[:, None], sampled]
    if in_batch:
        others = users @ target_embeddings.T + target_bias - target_log_q
        keep = (targets[:, None] != targets[None, :]) & (example_mask[None, :] > 0)
        columns.append(torch.where(keep, others, _MASKED))
    logits = torch.cat(columns, dim=1)
    per_example = torch.logsumexp(logits, dim=1) - positive
    return (per_example * example_mask).sum() / example_mask.sum().clamp_min(1.0)
