"""Implicit-feedback losses over a batch of whole users, picked by name from ``LOSSES``.

Each loss maps ``(model, batch, generator)`` to a scalar whose scale does not depend on
how many users a batch holds (a mean over the batch's positive pairs, or for ``ials`` over
its users). ``make_loss`` binds a loss's keyword hyper-parameters.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from stamen.models.batches import Batch
from stamen.models.mf.factorization import MatrixFactorization

__all__ = ["LOSSES", "LossFn", "bce_loss", "bpr_loss", "ials_loss", "make_loss", "softmax_loss"]

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


def ials_loss(
    model: MatrixFactorization,
    batch: Batch,
    generator: torch.Generator,
    *,
    alpha: float = 1.0,
    l2: float = 0.0,
    item_l2: float = 0.0,
) -> torch.Tensor:
    """Weighted squared loss over the whole catalogue, the objective of implicit ALS
    (Hu, Koren & Volinsky 2008): every item is a target, 1 for the user's items with
    confidence ``1 + alpha``, 0 for the rest with confidence 1; plus ``l2`` on the batch's
    user factors and ``item_l2`` on the whole item table. Mean over the batch's users.
    """
    del generator
    emb = model(batch.users)
    scores = model.logits(emb)
    target = torch.zeros_like(scores)
    target[batch.rows, batch.items] = 1.0
    confidence = 1.0 + alpha * target
    users = len(batch.users)
    fit_term = (confidence * (target - scores) ** 2).sum() + l2 * emb.pow(2).sum()
    return fit_term / users + item_l2 * model.items.weight.pow(2).sum()


LOSSES: dict[str, LossFn] = {
    "bce": bce_loss,
    "bpr": bpr_loss,
    "ials": ials_loss,
    "softmax": softmax_loss,
}


def make_loss(name: str, **params: Any) -> LossFn:
    """The loss ``name`` with those of ``params`` it accepts bound (others are ignored)."""
    try:
        fn = LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}") from None
    accepted = {k for k, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY}
    bound = {k: v for k, v in params.items() if k in accepted}
    return partial(fn, **bound) if bound else fn
