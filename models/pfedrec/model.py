"""PFedRec (``--model pfedrec``): Zhang et al., "Dual Personalization on Federated
Recommendation", IJCAI 2023, under Stamen's protocol.

There is no user embedding. The **shared** array is the item embedding table
(``items.weight``, ``(n_items, dim)``); the server averages the devices' updates of it
(FedAvg: the reference code's plain mean of the devices' tables). Each device keeps a
**personal score function**, ``score(i) = w · e_i + b`` (the reference code's
``affine_output``, a linear layer over the item embedding, read through a sigmoid), as its
private state ``[w, b]`` (``dim + 1`` floats); it never leaves the device.

**The device step** (``personalise``), as the reference code's ``fed_train_a_round``: the
device starts from the current shared table and its score function (a fresh one drawn
as torch's ``nn.Linear`` initialises it on its first round), pairs each of its training
items with ``negatives`` items drawn uniformly from the catalogue items it has not
interacted with (it knows no one else's items and no held-out ones), and for
``local_epochs`` shuffled passes over these examples in batches of ``batch_size`` takes,
per batch, one SGD step of the mean binary cross-entropy on the score function, then one
on its copy of the item table (with the score function just updated) at the item
learning rate ``local_lr * n_items * item_lr_scale``. The fine-tuned table is the
device's **personalised item embedding**; the dense difference from the shared table
(every row, touched or not) is the upload, and the new score function is kept.

**Scoring** on a device takes the same step from the current shared table and the stored
score function and scores every item with the personalised table and the updated score
function; the stored score function is not replaced by scoring (only training moves it).
Where the reference scores with the table a device fine-tuned in its last round, Stamen's
device fine-tunes the release it holds now (the same when every device trains every
round, as in the published runs; fresher under partial participation, and no device
table is stored). The reference's BCE on sigmoid outputs is computed here from logits
(the same gradient without float32 saturation). A release served on a device
(``serving``) cannot hold one person's table: it scores the shared table against the
score function's ``w`` re-fitted by the step on the person's history.

The step is batch-first: every device of a batch steps at once (padded to the longest
device's number of batches), each device's draws coming from its own seed, so a device
alone (the ClientApp) and inside a cohort (the batched engine) compute the same update.
"""

from __future__ import annotations

import math
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass

import numpy as np
import torch

from stamen.models.batches import UserItems
from stamen.models.item_table_model import ItemTableModel
from stamen.models.pfedrec.settings import PFedRecSettings
from stamen.models.quantize import ItemTable
from stamen.models.registry import DeviceInputs, DeviceUpdates, Serving, register_model

__all__ = [
    "PFedRec",
    "Personalised",
    "fresh_score_function",
    "padded_epochs",
    "personalise",
    "training_examples",
]

#: Devices whose personalised tables are materialised at once when scoring.
_SCORING_CHUNK = 32


def fresh_score_function(dim: int, rng: np.random.Generator) -> np.ndarray:
    """A new device's score function ``[w, b]``: uniform on ``±1/sqrt(dim)``, as torch
    initialises ``nn.Linear(dim, 1)``."""
    bound = 1.0 / math.sqrt(dim)
    return rng.uniform(-bound, bound, dim + 1).astype(np.float32)


def training_examples(
    positives: np.ndarray, *, n_items: int, negatives: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A device's examples for one step: each of its ``positives`` (label 1) followed by
    ``negatives`` items (label 0) drawn uniformly, with replacement, from the catalogue
    items not among its positives. Returns ``(items, labels)``."""
    positives = np.asarray(positives, np.int64)
    unseen = np.setdiff1d(np.arange(n_items), positives)
    if len(positives) == 0 or len(unseen) == 0:
        return positives, np.ones(len(positives), np.float32)
    drawn = unseen[rng.integers(0, len(unseen), size=(len(positives), negatives))]
    items = np.concatenate([positives[:, None], drawn], axis=1).ravel()
    labels = np.zeros((len(positives), negatives + 1), np.float32)
    labels[:, 0] = 1.0
    return items, labels.ravel()


@dataclass(frozen=True)
class Personalised:
    """Each device's step: ``table`` ``(devices, n_items, dim)`` its personalised item
    embedding, ``score`` ``(devices, dim + 1)`` its new score function ``[w, b]``,
    ``losses`` its mean training loss over its examples (0 without any)."""

    table: torch.Tensor
    score: torch.Tensor
    losses: np.ndarray


def _batches(
    devices: DeviceInputs, settings: PFedRecSettings, n_items: int
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Every device's starting score function and, per epoch, its padded examples:
    ``(items, labels, mask)`` of shape ``(devices, batches, batch_size)``. Each device
    draws from its own seed: a fresh score function, its negatives, one order per epoch."""
    size, n = settings.batch_size, devices.n_devices
    starts, examples, orders = [], [], []
    for d in range(n):
        rng = np.random.default_rng(int(devices.seeds[d]))
        state = devices.state(d)
        starts.append(fresh_score_function(settings.dim, rng) if state is None else state)
        items, labels = training_examples(
            devices.history.row(d), n_items=n_items, negatives=settings.negatives, rng=rng
        )
        examples.append((items, labels))
        orders.append([rng.permutation(len(items)) for _ in range(settings.local_epochs)])
    return np.stack(starts).astype(np.float32), padded_epochs(examples, orders, size)


def padded_epochs(
    examples: list[tuple[np.ndarray, np.ndarray]],
    orders: list[list[np.ndarray]],
    batch_size: int,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per epoch, every device's examples ``(items, labels)`` in its order for that epoch
    (``orders[d][epoch]``), padded to the longest device's number of batches: ``(items,
    labels, mask)`` of shape ``(devices, batches, size)``, ``mask`` 0 on padding; ``size``
    is ``batch_size``, or the most examples of a device where every device has fewer."""
    n = len(examples)
    batch_size = min(batch_size, max((len(i) for i, _ in examples), default=1)) or 1
    width = max((math.ceil(len(i) / batch_size) for i, _ in examples), default=0) * batch_size
    epochs = []
    for epoch in range(len(orders[0]) if orders else 0):
        items = np.zeros((n, width), np.int64)
        labels = np.zeros((n, width), np.float32)
        mask = np.zeros((n, width), np.float32)
        for d, (its, lbs) in enumerate(examples):
            order = orders[d][epoch]
            items[d, : len(order)], labels[d, : len(order)] = its[order], lbs[order]
            mask[d, : len(order)] = 1.0
        shape = (n, width // batch_size, batch_size)
        epochs.append((items.reshape(shape), labels.reshape(shape), mask.reshape(shape)))
    return epochs


def personalise(
    shared: list[np.ndarray], devices: DeviceInputs, settings: PFedRecSettings
) -> Personalised:
    """PFedRec's device step on every device of the batch (see module docstring)."""
    table = torch.from_numpy(np.asarray(shared[0], np.float32))
    n_items = table.shape[0]
    starts, epochs = _batches(devices, settings, n_items)
    n = devices.n_devices
    score = torch.from_numpy(starts)
    w, b = score[:, :-1].clone(), score[:, -1].clone()
    tables = table.expand(n, -1, -1).clone()
    lr, item_lr, decay = settings.local_lr, settings.item_lr(n_items), settings.weight_decay
    rows = torch.arange(n)[:, None]
    total, seen = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    with torch.no_grad():
        for items_np, labels_np, mask_np in epochs:
            items, labels = torch.from_numpy(items_np), torch.from_numpy(labels_np)
            mask = torch.from_numpy(mask_np)
            for k in range(items.shape[1]):
                it, y, m = items[:, k], labels[:, k], mask[:, k]
                count = m.sum(1)
                active = (count > 0).float()
                scale = m / count.clamp_min(1.0)[:, None]  # the batch mean, padding out
                e = tables[rows, it]  # (devices, batch, dim)
                # the score function's step
                g = (torch.sigmoid((e * w[:, None]).sum(-1) + b[:, None]) - y) * scale
                w = w - lr * ((g[..., None] * e).sum(1) + decay * active[:, None] * w)
                b = b - lr * (g.sum(1) + decay * active * b)
                # the item table's step, with the updated score function
                logits = (e * w[:, None]).sum(-1) + b[:, None]
                bce = torch.nn.functional.binary_cross_entropy_with_logits(
                    logits, y, reduction="none"
                )
                total += (bce * m).sum(1).double()
                seen += count.double()
                g = (torch.sigmoid(logits) - y) * scale
                if decay:
                    tables *= (1 - item_lr * decay * active)[:, None, None]
                flat = tables.view(-1, tables.shape[-1])  # row d * n_items + item
                step = -item_lr * g[..., None] * w[:, None, :]
                flat.index_add_(0, (rows * n_items + it).ravel(), step.reshape(-1, step.shape[-1]))
    losses = (total / seen.clamp_min(1.0)).numpy()
    return Personalised(table=tables, score=torch.cat([w, b[:, None]], 1), losses=losses)


@register_model("pfedrec")
class PFedRec(ItemTableModel):
    """PFedRec (see module docstring); settings: :class:`PFedRecSettings`."""

    settings_class = PFedRecSettings
    display_name = "PFedRec"
    settings_field = "pfedrec"
    # the reference code's plain mean of the devices' tables; at its item learning rate a
    # coordinate moves by tens in one step
    update_range = 256.0
    server_optimizer = {"name": "fedavg", "lr": 1.0}
    settings: PFedRecSettings

    def device_updates(self, shared: list[np.ndarray], devices: DeviceInputs) -> DeviceUpdates:
        """Each device's step (:func:`personalise`): the dense change of the shared table
        is uploaded, the score function kept."""
        step = personalise(shared, devices, self.settings)
        return self.table_updates(shared, step.table, step.score, step.losses)

    def scores(self, shared: list[np.ndarray], devices: DeviceInputs) -> torch.Tensor:
        """Every item scored by each device's personalised table and score function after
        the step from its stored score function (which scoring does not replace)."""
        parts = []
        for start in range(0, devices.n_devices, _SCORING_CHUNK):
            rows = np.arange(start, min(start + _SCORING_CHUNK, devices.n_devices))
            step = personalise(shared, devices.select(rows), self.settings)
            w, b = step.score[:, :-1], step.score[:, -1]
            parts.append(torch.einsum("dnk,dk->dn", step.table, w) + b[:, None])
        if not parts:
            return torch.zeros(0, self.n_items)
        return torch.cat(parts)

    def serving(
        self,
        shared: list[np.ndarray],
        table: Callable[[str], ItemTable] | None = None,
        cache: MutableMapping[str, np.ndarray] | None = None,
    ) -> Serving:
        """The shared table scored against ``w``, the score function re-fitted by the step
        on the person's history from the previous ``w`` (a fresh one at first); no bias
        (``b`` shifts every item alike)."""
        items = table("items.weight") if table is not None else ItemTable.dense(shared[0])
        settings = self.settings

        def user(rows: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
            state = None if previous is None else np.append(previous, 0.0).astype(np.float32)
            inputs = DeviceInputs(
                history=UserItems.single(rows, n_items=len(items)),
                seeds=np.array([len(rows)], np.uint64),
                states=(state,),
            )
            return personalise(shared, inputs, settings).score[0, :-1].numpy().copy()

        return Serving(items, np.zeros(len(items), np.float32), user)
