"""Matrix factorisation behind the model interface (``--model mf``).

Shared arrays: the item factors and biases (``SHARED_PARAMETERS``); private state: the
device's user factor. The device step is batch-first. For the ``ials`` loss with one local
epoch (the default) it is closed-form: every device's user factor is solved exactly
against the current item side (``IALSSolver``, one small system per device) and its one
SGD step on ``Σ c (t - s)² + l2 |x|² + item_l2 |W|²`` is, with scores ``s = W x + b``,
targets ``t``, confidences ``c = 1 + alpha t`` and ``r = c ∘ (t - s)``,

    ΔW = lr (2 r xᵀ - (2 item_l2 + wd) W),    Δb = lr (2 r - wd b),

times the device's count under ``update_weighting="positives"``: exactly the gradient
the autograd step (``stamen.models.mf.local.local_update``) takes, without a per-device
model (``tests/models/test_model_contract.py`` checks the two agree). Other losses and epochs
run the autograd step device by device.

Importing this module (and serving an ``ials`` release) needs numpy only: torch and the
torch modules (``factorization``, ``local``, ``stamen.models.training``) are imported by
the training and scoring paths that use them.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from stamen.models.batches import UserItems
from stamen.models.mf.ials import IALSSolver
from stamen.models.mf.settings import SHARED_PARAMETERS, LocalSettings
from stamen.models.quantize import ItemTable
from stamen.models.registry import DeviceInputs, DeviceUpdates, RecModel, Serving, register_model

if TYPE_CHECKING:
    import torch

__all__ = ["SERVING_REFRESH_STEPS", "MFFactors", "MFModel", "mf_factors"]

#: Adam steps that re-fit a user factor from scratch for offline scoring.
SERVING_REFRESH_STEPS = 50


@dataclass(frozen=True)
class MFFactors:
    """A batch's closed-form ``ials`` updates in factored form: device ``u`` moves ``W`` by
    ``lr * weight[u] * (2 residual[u] ⊗ x[u] - decay * W)`` (see module docstring)."""

    w: torch.Tensor
    b: torch.Tensor
    x: torch.Tensor
    residual: torch.Tensor
    weight: torch.Tensor
    decay: float

    def deltas(self, lr: float, weight_decay: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense updates ``(devices, items, dim)`` and ``(devices, items)``."""
        d_w = lr * (2 * self.residual[:, :, None] * self.x[:, None, :] - self.decay * self.w[None])
        d_b = lr * (2 * self.residual - weight_decay * self.b[None])
        return d_w * self.weight[:, None, None], d_b * self.weight[:, None]


def mf_factors(shared: list[np.ndarray], data: UserItems, local: LocalSettings) -> MFFactors:
    """The factored ``ials`` step of every row of ``data`` from ``shared``."""
    import torch

    from stamen.models.mf.factorization import MatrixFactorization
    from stamen.models.training import solve_users

    model = MatrixFactorization(data.n_users, shared[0].shape[0], local.dim)
    model.load_shared_arrays(shared)
    solve_users(model, data, alpha=local.alpha, l2=local.l2)
    with torch.no_grad():
        w, b = model.items.weight.detach(), model.items.bias.detach()
        x = model.users.weight.detach()
        target = torch.zeros(data.n_users, w.shape[0])
        rows, items = data.pairs()
        target[torch.from_numpy(rows), torch.from_numpy(items)] = 1.0
        residual = (1.0 + local.alpha * target) * (target - (x @ w.T + b))
    weight = torch.ones(data.n_users)
    if local.update_weighting == "positives":
        weight = torch.from_numpy(data.counts().astype(np.float32))
    decay = 2 * (local.item_l2 or 0.0) + local.weight_decay
    return MFFactors(w=w, b=b, x=x, residual=residual, weight=weight, decay=decay)


@register_model("mf")
class MFModel(RecModel):
    """Matrix factorisation (see module docstring); settings: :class:`LocalSettings`."""

    settings_class = LocalSettings
    display_name = "MF"
    settings_field = "local"
    settings: LocalSettings

    def shared_names(self) -> tuple[str, ...]:
        """``items.weight`` (item factors) and ``items.bias``."""
        return SHARED_PARAMETERS

    def shared_shapes(self) -> list[tuple[int, ...]]:
        """``(n_items, dim)`` and ``(n_items,)``."""
        return [(self.n_items, self.settings.dim), (self.n_items,)]

    def init_shared(self, seed: int) -> list[np.ndarray]:
        """Item factors drawn from N(0, init_std²) by ``seed``; zero biases."""
        import torch

        from stamen.models.mf.factorization import MatrixFactorization

        model = MatrixFactorization(
            1,
            self.n_items,
            self.settings.dim,
            init_std=self.settings.init_std,
            generator=torch.Generator().manual_seed(seed),
        )
        return model.shared_arrays()

    def serving(
        self,
        shared: list[np.ndarray],
        table: Callable[[str], ItemTable] | None = None,
        cache: MutableMapping[str, np.ndarray] | None = None,
    ) -> Serving:
        """The item factors (the release's table, int8 or float32) and biases; the user
        factor solved exactly for ``ials`` (``IALSSolver``, precomputed once per release:
        its item side, ``ials.gram`` and ``ials.base``, read from ``cache`` where it holds
        them, else computed and added to it), else re-fitted by Adam steps from the
        previous one."""
        items = table("items.weight") if table is not None else ItemTable.dense(shared[0])
        bias = np.asarray(shared[1], np.float32)
        local = self.settings
        if local.loss == "ials":
            known = {} if cache is None else cache
            gram, base = known.get("ials.gram"), known.get("ials.base")
            if gram is not None and base is not None and base.shape == (items.dim,):
                solver = IALSSolver(items, bias.astype(np.float64), gram, base, local.alpha)
            else:
                solver = IALSSolver.build(items, bias, alpha=local.alpha, l2=local.l2)
                if cache is not None:
                    cache["ials.gram"], cache["ials.base"] = solver.gram, solver.base

            def user(rows: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
                return solver.solve(UserItems.single(rows, n_items=len(items)))[0]

        else:
            from stamen.models.mf.local import build_local_model

            def user(rows: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
                model = build_local_model(
                    shared,
                    previous,
                    settings=local,
                    items=UserItems.single(rows, n_items=len(items)),
                    rng=np.random.default_rng(len(rows)),
                )
                return model.users.weight.detach()[0].numpy().copy()

        return Serving(items, bias, user)

    def popularity(self, shared: list[np.ndarray]) -> np.ndarray:
        """The item biases."""
        return np.asarray(shared[1], np.float32)

    def quantizable(self) -> tuple[str, ...]:
        """The item factors."""
        return ("items.weight",)

    def for_serving(self) -> MFModel:
        """With ``SERVING_REFRESH_STEPS`` Adam steps at lr 0.05 for non-``ials`` losses (a
        factor re-fitted from scratch needs more than a device's warm refresh)."""
        update = {"refresh_steps": SERVING_REFRESH_STEPS, "refresh_lr": 0.05}
        return MFModel(self.settings.model_copy(update=update), self.catalog)

    def closed_form(self) -> bool:
        """Whether the device step is the closed-form ``ials`` step."""
        return self.settings.loss == "ials" and self.settings.local_epochs == 1

    def device_updates(self, shared: list[np.ndarray], devices: DeviceInputs) -> DeviceUpdates:
        """Closed-form for ``ials`` with one epoch, else the autograd step per device."""
        local = self.settings
        if self.closed_form():
            f = mf_factors(shared, devices.history, local)
            d_w, d_b = f.deltas(local.local_lr, local.weight_decay)
            losses = _ials_losses(f, devices.history, local)
            states = tuple(row.copy() for row in f.x.numpy())
            return DeviceUpdates([d_w.numpy(), d_b.numpy()], states, losses)
        from stamen.models.mf.local import local_update

        results = [
            local_update(
                shared,
                devices.state(d),
                items=devices.history.row(d),
                settings=local,
                rng=np.random.default_rng(int(devices.seeds[d])),
            )
            for d in range(devices.n_devices)
        ]
        deltas = [np.stack([r.delta[k] for r in results]) for k in range(len(shared))]
        losses = np.array([r.metrics["train_loss"] for r in results], np.float64)
        return DeviceUpdates(deltas, tuple(r.user_factor for r in results), losses)

    def scores(self, shared: list[np.ndarray], devices: DeviceInputs) -> torch.Tensor:
        """Every user factor re-fitted on its history the way ``settings.loss`` prescribes
        (exactly for ``ials``, Adam steps from the stored or a seeded factor otherwise),
        then ``W x + b``."""
        return self.scores_and_states(shared, devices)[0]

    def scores_and_states(
        self, shared: list[np.ndarray], devices: DeviceInputs
    ) -> tuple[torch.Tensor, tuple[np.ndarray | None, ...]]:
        """:meth:`scores` and the re-fitted user factors."""
        import torch

        from stamen.models.mf.factorization import MatrixFactorization
        from stamen.models.training import refit_users

        local = self.settings
        model = MatrixFactorization(devices.n_devices, self.n_items, local.dim)
        model.load_shared_arrays(shared)
        with torch.no_grad():  # the exact ials solve ignores the starting factor
            for d in range(0 if local.loss == "ials" else devices.n_devices):
                start = devices.state(d)
                if start is None:
                    rng = np.random.default_rng(int(devices.seeds[d]))
                    start = rng.normal(0.0, local.init_std, size=local.dim)
                model.users.weight[d] = torch.as_tensor(start, dtype=torch.float32)
        refit_users(model, devices.history, local, np.random.default_rng(int(devices.seeds[0])))
        with torch.no_grad():
            users = model(torch.arange(devices.n_devices))
            states = tuple(row.numpy().copy() for row in users)
            return model.logits(users), states


def _ials_losses(f: MFFactors, data: UserItems, local: LocalSettings) -> np.ndarray:
    """Each device's ``ials`` loss at its solved factor, before the step."""
    import torch

    with torch.no_grad():
        target = torch.zeros_like(f.residual)
        rows, items = data.pairs()
        target[torch.from_numpy(rows), torch.from_numpy(items)] = 1.0
        confidence = 1.0 + local.alpha * target
        fit = (f.residual.pow(2) / confidence).sum(1) + local.l2 * f.x.pow(2).sum(1)
        return (fit + (local.item_l2 or 0.0) * f.w.pow(2).sum()).double().numpy()
