"""The device's local step under record-level DP: DP-SGD with Opacus' ghost clipping.

One *record* is one (device, item) interaction, and its loss is the full-catalogue softmax
cross-entropy of the item given the device's user factor (every item's logit comes from
the shared ``items`` ``nn.Linear``, whose per-record gradient norm ghost clipping computes
without materialising per-record gradients of the item table).

1. Load the shared item side into a one-user model whose user factor is the stored one
   (itself only ever produced by this step) or the seeded draw. It is NOT re-solved from
   the device's data: that exact solve is a non-private function of the records, and the
   released update would then depend on them outside the DP-SGD mechanism.
2. Take ``steps_per_round`` DP-SGD steps (Opacus' ``PrivacyEngine.make_private`` in
   ``grad_sample_mode="ghost"``): each step samples records independently with the fixed
   rate q, clips every record's gradient over ALL trained parameters (item factors, item
   biases and the user factor) to C, sums them, adds N(0, (z C)²) and takes an SGD step
   of ``settings.local_lr``. Losses are *summed* over a batch, so no step divides by a
   batch size or a record count (which would make the update depend on the device's
   number of interactions); for the same reason the delta is never scaled by the count
   (``update_weighting`` must be ``"uniform"``).
3. Return the dense difference of the shared parameters (every item row), as
   ``stamen.models.mf.local.local_update`` does.

Opacus derives the Poisson rate from the data loader (``1 / len(loader)``, i.e. from the
number of records) when ``poisson_sampling=True``; the step therefore builds its own
Poisson loader with Opacus' ``UniformWithReplacementSampler`` at the configured rate and
passes ``poisson_sampling=False``. An empty Poisson batch still takes a step (zero
gradient plus the calibrated noise, through the DP optimiser), as DP-SGD requires; Opacus
1.6's ghost norm of ``nn.Embedding`` cannot process an empty batch, so that step skips the
forward pass.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from stamen.models.batches import UserItems
from stamen.models.mf.factorization import MatrixFactorization
from stamen.models.mf.local import LocalResult, build_local_model
from stamen.models.mf.settings import LocalSettings
from stamen.models.training import torch_generator
from stamen.privacy import RecordDP

__all__ = ["record_dp_update"]


class _RecordLogits(nn.Module):
    """Per-record logits over the whole catalogue: ``items(users(record's user))``."""

    def __init__(self, model: MatrixFactorization) -> None:
        super().__init__()
        self.model = model

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        return self.model.logits(self.model(users))


def _collate(rows: list[tuple[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    items = torch.tensor([int(row[0]) for row in rows], dtype=torch.long)
    return torch.zeros(len(items), dtype=torch.long), items


def _poisson_loader(
    items: np.ndarray, record_dp: RecordDP, generator: torch.Generator
) -> DataLoader:
    """``steps_per_round`` batches, each record in each with probability ``sample_rate``."""
    dataset = TensorDataset(torch.as_tensor(items, dtype=torch.long))
    sampler: list[list[int]] | UniformWithReplacementSampler
    if len(items):
        sampler = UniformWithReplacementSampler(
            num_samples=len(items),
            sample_rate=record_dp.sample_rate,
            generator=generator,
            steps=record_dp.steps_per_round,
        )
    else:  # nothing to sample: every step is noise alone
        sampler = [[] for _ in range(record_dp.steps_per_round)]
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=_collate)


def record_dp_update(
    shared: list[np.ndarray],
    user_factor: np.ndarray | None,
    *,
    items: np.ndarray,
    settings: LocalSettings,
    record_dp: RecordDP,
    rng: np.random.Generator,
) -> LocalResult:
    """One device step by DP-SGD on the device's training ``items`` (see module docstring).

    ``settings`` gives the model's dimension and initial scale, the learning rate
    (``local_lr``) and ``weight_decay``; its loss, refresh and epoch settings do not apply
    (the loss is the per-record softmax, the length ``record_dp.steps_per_round``).
    ``metrics["train_loss"]`` is the mean cross-entropy of the device's records under the
    trained model (0 for a device without records).
    """
    if settings.update_weighting != "uniform":
        raise ValueError(
            "record-level DP needs update_weighting='uniform': scaling the update by the "
            "device's number of positives would make it depend on that count"
        )
    data = UserItems.single(items, n_items=shared[0].shape[0])
    model = build_local_model(
        shared, user_factor, settings=settings, items=data, rng=rng, refit=False
    )
    optimizer = torch.optim.SGD(
        model.parameters(), lr=settings.local_lr, weight_decay=settings.weight_decay
    )
    loader = _poisson_loader(data.items, record_dp, torch_generator(rng))
    with warnings.catch_warnings():
        # Seeded noise (explicit randomness) rules out Opacus' secure_mode; and the user
        # indices fed to the model never require gradients, which torch warns about.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        engine = PrivacyEngine(accountant=record_dp.accountant)
        module, dp_optimizer, criterion, loader = engine.make_private(
            module=_RecordLogits(model),
            optimizer=optimizer,
            data_loader=loader,
            criterion=nn.CrossEntropyLoss(reduction="sum"),
            noise_multiplier=record_dp.noise_multiplier,
            max_grad_norm=record_dp.max_grad_norm,
            loss_reduction="sum",
            poisson_sampling=False,
            grad_sample_mode="ghost",
            noise_generator=torch_generator(rng),
        )
        module.forbid_grad_accumulation()
        module.train()
        for users, batch_items in loader:
            dp_optimizer.zero_grad(set_to_none=True)
            if len(batch_items):
                criterion(module(users), batch_items).backward()
            else:
                for p in model.parameters():
                    p.grad = torch.zeros_like(p)
            dp_optimizer.step()
    updated = model.shared_arrays()
    delta = [(new - old).astype(np.float32) for new, old in zip(updated, shared, strict=True)]
    with torch.no_grad():
        logits = model.logits(model(torch.zeros(1, dtype=torch.long)))[0]
        positives = torch.as_tensor(data.items)
        loss = (
            float(torch.logsumexp(logits, 0) - logits[positives].mean()) if len(data.items) else 0.0
        )
    factor = model.users.weight.detach()[0].numpy().copy()
    return LocalResult(delta=delta, user_factor=factor, metrics={"train_loss": loss})
