"""The one training loop. The centralised baseline, every device and the tests call it;
they differ only in the data and the parameters they hand it."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

from stamen.models.batches import UserItems, user_batches
from stamen.models.losses import LOSSES, LossFn
from stamen.models.mf.factorization import MatrixFactorization
from stamen.models.mf.ials import IALSSolver
from stamen.models.mf.settings import LocalSettings
from stamen.models.quantize import ItemTable

__all__ = [
    "REFITTERS",
    "fit",
    "refit_users",
    "refresh_users",
    "resolve_loss",
    "solve_users",
    "torch_generator",
]


def torch_generator(rng: np.random.Generator) -> torch.Generator:
    """A torch generator seeded from a numpy generator (one draw from ``rng``)."""
    return torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))


def resolve_loss(loss: str | LossFn) -> LossFn:
    """Look a loss up by name in ``LOSSES`` (callables pass through)."""
    if callable(loss):
        return loss
    try:
        return LOSSES[loss]
    except KeyError:
        raise ValueError(f"unknown loss {loss!r}; choose one of {sorted(LOSSES)}") from None


def fit(
    model: MatrixFactorization,
    data: UserItems,
    *,
    loss: str | LossFn,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    batch_size: int,
    rng: np.random.Generator,
    user_index: np.ndarray | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model`` for ``epochs`` passes over ``data`` (batches of whole users).

    Only the parameters held by ``optimizer`` move. ``user_index`` maps rows of ``data`` to
    rows of the model's user table. Returns the mean loss of each epoch.
    """
    loss_fn = resolve_loss(loss)
    generator = torch_generator(rng)
    model.train()
    history: list[float] = []
    for epoch in range(epochs):
        total, batches = 0.0, 0
        batches_iter: Iterable = user_batches(
            data, batch_size=batch_size, rng=rng, user_index=user_index
        )
        for batch in batches_iter:
            optimizer.zero_grad(set_to_none=True)
            value = loss_fn(model, batch, generator)
            value.backward()
            optimizer.step()
            total += float(value.detach())
            batches += 1
        history.append(total / max(batches, 1))
        if on_epoch is not None:
            on_epoch(epoch, history[-1])
    return history


def refresh_users(
    model: MatrixFactorization,
    data: UserItems,
    *,
    loss: str | LossFn,
    steps: int,
    lr: float,
    weight_decay: float,
    rng: np.random.Generator,
    batch_size: int = 1024,
    user_index: np.ndarray | None = None,
) -> list[float]:
    """Re-fit the user factors against the frozen item side (the shared model).

    Adam is per-coordinate and the loss is a sum of per-user terms scaled per batch, so
    refreshing many users in one batch moves each row as if it were refreshed alone: a
    device (one user) and the evaluation harness (all users) run the same computation.
    """
    frozen = [p for p in model.items.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        optimizer = torch.optim.Adam(model.users.parameters(), lr=lr, weight_decay=weight_decay)
        return fit(
            model,
            data,
            loss=loss,
            optimizer=optimizer,
            epochs=steps,
            batch_size=batch_size,
            rng=rng,
            user_index=user_index,
        )
    finally:
        for p in frozen:
            p.requires_grad_(True)


def solve_users(
    model: MatrixFactorization,
    data: UserItems,
    *,
    alpha: float,
    l2: float,
    batch_size: int = 256,
) -> None:
    """Set each user's factor to the exact minimiser of the ``ials`` loss against the
    frozen item side (``stamen.models.mf.ials.IALSSolver``). Row ``u`` of ``data`` is row
    ``u`` of the model's user table."""
    table = ItemTable.dense(model.items.weight.detach().numpy())
    solver = IALSSolver.build(table, model.items.bias.detach().numpy(), alpha=alpha, l2=l2)
    factors = solver.solve(data, batch_size=batch_size)
    with torch.no_grad():
        model.users.weight[: data.n_users] = torch.from_numpy(factors)


def _refresh_by_gradient(
    model: MatrixFactorization, data: UserItems, settings: LocalSettings, rng: np.random.Generator
) -> None:
    if settings.refresh_steps:
        refresh_users(
            model,
            data,
            loss=settings.loss_fn(),
            steps=settings.refresh_steps,
            lr=settings.refresh_lr,
            weight_decay=settings.weight_decay,
            rng=rng,
        )


def _refresh_exactly(
    model: MatrixFactorization, data: UserItems, settings: LocalSettings, rng: np.random.Generator
) -> None:
    solve_users(model, data, alpha=settings.alpha, l2=settings.l2)


#: How each loss re-fits user factors against a frozen item side (default: Adam steps).
REFITTERS = {"ials": _refresh_exactly}


def refit_users(
    model: MatrixFactorization, data: UserItems, settings: LocalSettings, rng: np.random.Generator
) -> None:
    """Re-fit every user factor of ``model`` (rows of ``data``) the way ``settings.loss``
    prescribes: an exact solve for ``ials``, a few Adam steps otherwise."""
    REFITTERS.get(settings.loss, _refresh_by_gradient)(model, data, settings, rng)
