"""Implicit-feedback losses over a batch of whole users, picked by name from ``LOSSES``.

Each loss maps ``(model, batch, generator)`` to a scalar: the mean over the batch's
positive pairs, so its scale does not depend on how many users a batch holds.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from stamen.models.batches import Batch
from stamen.models.mf import MatrixFactorization

__all__ = ["LOSSES", "LossFn", "bce_loss", "bpr_loss", "softmax_loss"]

LossFn = Callable[[MatrixFactorization, Batch, torch.Generator], torch.Tensor]

#: Negatives drawn per positive by the sampled losses.
NEGATIVES_PER_POSITIVE = 4


def softmax_loss(
    model: MatrixFactorization, batch: Batch, generator: torch.Generator
) -> torch.Tensor:
    """Multinomial likelihood over the whole catalogue (full softmax; no sampling).

    For one user the softmax normaliser is shared by all of that user's positives, so the
    cost is one row of logits per user, not one per positive.
    """
    del generator
    emb = model(batch.users)
    logits = model.logits(emb)
    counts = torch.bincount(batch.rows, minlength=len(batch.users)).to(logits.dtype)
    positive = logits[batch.rows, batch.items].sum()
    return ((counts * torch.logsumexp(logits, dim=1)).sum() - positive) / len(batch.rows)


def _negatives(model: MatrixFactorization, n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(model.n_items, (n,), generator=generator)


def bpr_loss(model: MatrixFactorization, batch: Batch, generator: torch.Generator) -> torch.Tensor:
    """Bayesian personalised ranking with uniformly sampled negatives."""
    emb = model(batch.users)
    rows = batch.rows.repeat(NEGATIVES_PER_POSITIVE)
    pos = model.pair_scores(emb, rows, batch.items.repeat(NEGATIVES_PER_POSITIVE))
    neg = model.pair_scores(emb, rows, _negatives(model, len(rows), generator))
    return -F.logsigmoid(pos - neg).mean() * NEGATIVES_PER_POSITIVE


def bce_loss(model: MatrixFactorization, batch: Batch, generator: torch.Generator) -> torch.Tensor:
    """Binary cross-entropy: positives against uniformly sampled negatives."""
    emb = model(batch.users)
    pos = model.pair_scores(emb, batch.rows, batch.items)
    rows = batch.rows.repeat(NEGATIVES_PER_POSITIVE)
    neg = model.pair_scores(emb, rows, _negatives(model, len(rows), generator))
    total = F.softplus(-pos).sum() + F.softplus(neg).sum()
    return total / len(batch.rows)


LOSSES: dict[str, LossFn] = {"bce": bce_loss, "bpr": bpr_loss, "softmax": softmax_loss}
