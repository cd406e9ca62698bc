"""The one training loop. The centralised baseline, every device and the tests call it;
they differ only in the data and the parameters they hand it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from stamen.models.batches import UserItems, user_batches
from stamen.models.losses import LOSSES, LossFn
from stamen.models.mf.factorization import MatrixFactorization
from stamen.models.mf.settings import LocalSettings
from stamen.models.quantize import ItemTable

__all__ = [
    "IALSSolver",
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


@dataclass(frozen=True, eq=False)
class IALSSolver:
    """The exact ``ials`` user solve against a frozen item side, batch-first.

    The user factor minimising the ``ials`` loss is the solution of ``(QᵀQ + alpha
    Q_uᵀQ_u + l2 I) p_u = -Qᵀb + Σ_{i∈u}(1 + alpha - alpha b_i) q_i``. Everything but
    the user's own rows is fixed by the item side, so :meth:`build` computes ``QᵀQ +
    l2 I`` and ``-Qᵀb`` once (in float64, a block of rows at a time) and :meth:`solve`
    then costs one small ``dim x dim`` system per user: what a device pays per event.
    """

    table: ItemTable
    bias: np.ndarray
    gram: np.ndarray
    base: np.ndarray
    alpha: float

    @classmethod
    def build(
        cls, table: ItemTable, bias: np.ndarray, *, alpha: float, l2: float, block: int = 65536
    ) -> IALSSolver:
        """Precompute the item side's part of the system (see class docstring)."""
        dim = table.dim
        gram = l2 * np.eye(dim)
        base = np.zeros(dim)
        bias = np.asarray(bias, np.float64)
        for start in range(0, len(table), block):
            rows = table.rows(np.arange(start, min(start + block, len(table)))).astype(np.float64)
            gram += rows.T @ rows
            base -= rows.T @ bias[start : start + len(rows)]
        return cls(table=table, bias=bias, gram=gram, base=base, alpha=alpha)

    def solve(self, data: UserItems, *, batch_size: int = 256) -> np.ndarray:
        """The factor ``(n_users, dim)`` (float32) of every row of ``data``. Users are
        batched in order of their item count, so that a batch's padding to its longest
        row stays short (counts are heavy-tailed: a few long rows would otherwise widen
        every batch they fall in)."""
        out = np.zeros((data.n_users, self.table.dim), np.float32)
        order = np.argsort(data.counts(), kind="stable")
        for start in range(0, data.n_users, batch_size):
            users = order[start : start + batch_size]
            sub = data.select(users)
            counts = sub.counts()
            width = max(int(counts.max()) if len(counts) else 0, 1)
            rows, items = sub.pairs()
            slots = np.arange(len(items)) - np.repeat(sub.indptr[:-1], counts)
            padded = np.zeros((len(users), width, self.table.dim))
            weights = np.zeros((len(users), width))
            padded[rows, slots] = self.table.rows(items)
            weights[rows, slots] = 1.0 + self.alpha - self.alpha * self.bias[items]
            lhs = self.gram + self.alpha * padded.transpose(0, 2, 1) @ padded
            rhs = self.base + np.einsum("uw,uwd->ud", weights, padded)
            out[users] = np.linalg.solve(lhs, rhs[:, :, None])[:, :, 0]
        return out


def solve_users(
    model: MatrixFactorization,
    data: UserItems,
    *,
    alpha: float,
    l2: float,
    batch_size: int = 256,
) -> None:
    """Set each user's factor to the exact minimiser of the ``ials`` loss against the
    frozen item side (:class:`IALSSolver`). Row ``u`` of ``data`` is row ``u`` of the
    model's user table."""
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
