"""Baselines under the same protocol: popularity, and centralised MF trained through the
same model, loss and training loop as the devices, with early stopping on validation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

from stamen.models.mf.factorization import MatrixFactorization
from stamen.models.mf.settings import LocalSettings
from stamen.models.registry import DeviceInputs, RecModel, device_seeds
from stamen.models.training import fit
from stamen.simulation.baselines.private_als import dp_popularity
from stamen.simulation.config import CentralisedSettings
from stamen.simulation.protocol.evaluate import Scorer, evaluate
from stamen.simulation.protocol.split import Split

__all__ = [
    "dp_popularity_scorer",
    "mf_scorer",
    "popularity_scorer",
    "shared_model_scorer",
    "train_centralised_mf",
]


def popularity_scorer(split: Split) -> Scorer:
    """Scores every item by its number of training interactions."""
    counts = torch.from_numpy(
        np.bincount(split.train.items, minlength=split.n_items).astype(np.float32)
    )
    return lambda users: counts.expand(len(users), -1)


def dp_popularity_scorer(
    split: Split, *, epsilon: float, delta: float, seed: int
) -> tuple[Scorer, float]:
    """The DP popularity baseline (``stamen.simulation.baselines.private_als.dp_popularity``: one
    Gaussian release of per-person normalised item counts) and the ε it spent."""
    counts, spent = dp_popularity(split.train, epsilon=epsilon, delta=delta, seed=seed)
    scores = torch.from_numpy(counts.astype(np.float32))
    return (lambda users: scores.expand(len(users), -1)), spent


def mf_scorer(model: MatrixFactorization) -> Scorer:
    """Scores of a full (all-users) MF model."""
    return lambda users: model.logits(model(torch.from_numpy(np.asarray(users, np.int64))))


def train_centralised_mf(
    split: Split,
    *,
    local: LocalSettings,
    settings: CentralisedSettings,
    seed: int,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> tuple[MatrixFactorization, dict[str, float]]:
    """Train MF on the pooled training data; keep the epoch with the best validation
    NDCG@10 (stop after ``settings.patience`` epochs without gain)."""
    rng = np.random.default_rng([seed, 1])
    local = local.for_population(split.n_users)
    model = MatrixFactorization(
        split.n_users,
        split.n_items,
        settings.dim or local.dim,
        init_std=local.init_std,
        generator=torch.Generator().manual_seed(seed),
    )
    optimizer = torch.optim.Adam(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    best, best_epoch, best_state = -1.0, 0, model.state_dict()
    for epoch in range(1, settings.epochs + 1):
        loss = fit(
            model,
            split.train,
            loss=local.loss_fn(),
            optimizer=optimizer,
            epochs=1,
            batch_size=settings.batch_size,
            rng=rng,
        )[0]
        score = evaluate(mf_scorer(model), split, stage="valid")["ndcg@10"]
        if on_epoch is not None:
            on_epoch(epoch, loss, score)
        if score > best:
            best, best_epoch = score, epoch
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= settings.patience:
            break
    model.load_state_dict(best_state)
    return model, {"best_epoch": best_epoch, "valid_ndcg@10": best, "epochs_run": epoch}


def shared_model_scorer(
    shared: list[np.ndarray],
    split: Split,
    *,
    model: RecModel,
    seed: int,
    attributes: np.ndarray | None = None,
    stage: Literal["valid", "test"] = "test",
) -> Scorer:
    """Scores from a federated model's shared arrays for any batch of users, from their
    training items (and on-device ``attributes``, rows by user) in the context of their
    ``stage`` event: ``model.for_serving()`` (MF re-fits every user factor from scratch,
    exactly for ``ials``)."""
    serving = model.for_serving()
    query = split.query_context(stage)

    def scorer(users: np.ndarray) -> torch.Tensor:
        users = np.asarray(users, np.int64)
        inputs = DeviceInputs(
            history=split.train.select(users),
            seeds=device_seeds(users, seed=seed, rnd=0, purpose=2),
            attributes=None if attributes is None else attributes[users],
            query=None if query is None else query[users],
        )
        return serving.scores(shared, inputs)

    return scorer
