"""FedRAP (``--model fedrap``): Li, Long and Zhou, "Federated Recommendation with Additive
Personalization", ICLR 2024, under Stamen's protocol, from the reference code
(``github.com/mtics/FedRAP``).

The **shared** array is the global item table ``C`` (``items.weight``, ``(n_items, dim)``,
the reference's ``item_commonality``); the server averages the devices' updates of it
(``Engine.aggregateParamsFromClients``: the plain mean of the devices' tables). Each
device keeps, as its **private state**, its additive item table ``D_u`` (``(n_items,
dim)``, ``item_personality``) and its score function ``[w, b]`` (``affine_output``); they
never leave the device. The device scores item ``i`` by ``sigmoid(w · (C_i + D_u,i) +
b)`` (``model/model.py``, ``FedRAP.forward``). The reference keeps ``D_u`` dense, every
row, and so does Stamen: weight decay moves every row at every step, so a row the device
never trains on does not stay at its initial value. The state is one flat float32 array
``[D_u (row-major), w, b]``: ``n_items * dim + dim + 1`` floats a device (on ML-100K at
dim 32, 215 KB a device, 203 MB for 943 devices in the batched engine).

**The device step** (``additive_step``), as ``Engine.federatedTrainOneRound`` trains a
client: the device starts from the current ``C`` and its ``D_u``, ``w``, ``b`` (on its
first round the one initial state every device shares, as every reference client starts
from a copy of one model: ``D_u`` from N(0, init_std²), ``w``, ``b`` as torch initialises
``nn.Linear``, drawn from ``init_seed``; a state drawn per device would leave the
devices' gradients on ``C``, each along its own random ``w``, to cancel out), pairs
each of its training items with ``negatives`` items drawn uniformly from the catalogue
items it has not interacted with (it knows no one else's items and no held-out ones), and
for at most ``local_epochs`` shuffled passes in batches of ``batch_size`` takes, per
batch, one SGD step of all of ``w``, ``b``, ``D_u`` and ``C`` together on
(``model/loss.py``, ``Loss.forward``)::

    BCE(batch mean) - λ · mean((D_u - C)²) + μ · mean(|C|)

the two means over the batch's rows of the tables (an item twice in a batch counts
twice) and their ``dim`` columns, with weight decay ``weight_decay`` on every row of
every part (torch's SGD on a dense embedding gradient). The learning rates are
``score_lr`` (``w``, ``b``) and ``item_lr`` (both tables), × ``round_decay`` per round
(``decay_rate``) and × ``step_decay`` per local step (the ``ExponentialLR`` stepped every
batch, fresh each round). A device stops early after an epoch that moved its running mean
loss (over every batch of the round so far, as the reference accumulates it) by less than
``tol`` of itself. The upload is the dense difference of ``C`` (every row: weight decay
moves them all); ``D_u``, ``w``, ``b`` are kept; the reported loss is the running mean.

**The curriculum** (:meth:`FedRAPSettings.weights`): λ and μ grow as ``tanh`` of the round
over 10, one round late as the reference sets them after each round. The reference
computes this curriculum (``self.lam``, ``self.mu``) but its ``Loss`` reads the constant
``config['lambda']`` and ``config['mu']``, so its published runs train with λ and μ fixed
from the first round; ``curriculum = "fixed"`` does that, the default follows the paper.

**Scoring** on a device is the reference's ``federatedEvaluate``: every item by ``(C +
D_u) · w + b`` with the current ``C`` and the stored state, which scoring does not change;
a device that has not trained scores with the initial state (the reference's initial
client model; its published runs train every user in every round, so none is left). A
release served on a device (``serving``) cannot hold one person's ``D_u``: it scores ``C``
against ``w`` from round 1's step from the initial state on the person's history.

Where Stamen's protocol differs from the reference: each device's draws (negatives,
orders) come from its own seed, so that a device alone (the ClientApp) and inside a
cohort (the batched engine) compute the same update; the negatives are drawn
with replacement (PFedRec's ``training_examples``) from the items outside the device's
training history (the reference draws distinct ones outside all of the user's items,
held-out ones included); BCE is computed from logits (the same gradient without float32
saturation); the reference's other variants (``vary_param`` ``sin``/``square``/``frac``,
``regular`` ``l2``/``nuc``/``inf``) are not offered. The step is batch-first: every device
of a batch steps at once, padded to the longest device's number of batches.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from dataclasses import dataclass

import numpy as np
import torch

from stamen.models.batches import UserItems
from stamen.models.fedrap.settings import FedRAPSettings
from stamen.models.item_table_model import ItemTableModel
from stamen.models.pfedrec.model import fresh_score_function, padded_epochs, training_examples
from stamen.models.quantize import ItemTable
from stamen.models.registry import DeviceInputs, DeviceUpdates, Serving, register_model

__all__ = ["Additive", "FedRAP", "additive_step", "fresh_state", "split_state"]

#: Devices whose personal tables are materialised at once when scoring.
_SCORING_CHUNK = 32


def fresh_state(n_items: int, settings: FedRAPSettings) -> np.ndarray:
    """The state ``[D_u, w, b]`` every device starts from, drawn from ``init_seed``:
    ``D_u`` from N(0, init_std²), then ``[w, b]`` as :func:`fresh_score_function` draws
    it."""
    rng = np.random.default_rng(settings.init_seed)
    table = rng.standard_normal((n_items, settings.dim), dtype=np.float32) * settings.init_std
    return np.concatenate([table.ravel(), fresh_score_function(settings.dim, rng)])


def split_state(state: np.ndarray, n_items: int, dim: int) -> tuple[np.ndarray, ...]:
    """A state's ``(D_u (n_items, dim), w (dim,), b (1,))``, views of it."""
    cut = n_items * dim
    return state[:cut].reshape(n_items, dim), state[cut:-1], state[-1:]


def _state(devices: DeviceInputs, d: int, settings: FedRAPSettings, n_items: int) -> np.ndarray:
    """Device ``d``'s stored state, or the fresh one (:func:`fresh_state`)."""
    state = devices.state(d)
    if state is None:
        return fresh_state(n_items, settings)
    width = n_items * settings.dim + settings.dim + 1
    if state.shape != (width,):
        raise ValueError(
            f"a FedRAP state over {n_items} items at dim {settings.dim} has {width} floats, "
            f"got shape {state.shape}"
        )
    return state


@dataclass(frozen=True)
class Additive:
    """Each device's step: ``common`` ``(devices, n_items, dim)`` its copy of ``C`` after
    the step, ``states`` its new ``[D_u, w, b]`` ``(devices, n_items * dim + dim + 1)``,
    ``losses`` its running mean loss (0 without any example)."""

    common: torch.Tensor
    states: torch.Tensor
    losses: np.ndarray


def _starts(
    devices: DeviceInputs, settings: FedRAPSettings, n_items: int
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Every device's starting state and, per epoch, its padded examples; each device
    draws from its own seed: its negatives, one order per epoch."""
    starts, examples, orders = [], [], []
    for d in range(devices.n_devices):
        rng = np.random.default_rng(int(devices.seeds[d]))
        starts.append(_state(devices, d, settings, n_items))
        items, labels = training_examples(
            devices.history.row(d), n_items=n_items, negatives=settings.negatives, rng=rng
        )
        examples.append((items, labels))
        orders.append([rng.permutation(len(items)) for _ in range(settings.local_epochs)])
    width = n_items * settings.dim + settings.dim + 1
    stacked = np.stack(starts) if starts else np.zeros((0, width), np.float32)
    return stacked.astype(np.float32), padded_epochs(examples, orders, settings.batch_size)


def additive_step(
    shared: list[np.ndarray], devices: DeviceInputs, settings: FedRAPSettings
) -> Additive:
    """FedRAP's device step in round ``devices.round`` on every device of the batch (see
    module docstring)."""
    if devices.round < 1:
        raise ValueError(
            "FedRAP's device step follows the round (its λ, μ and learning rates): "
            f"DeviceInputs.round must be 1 or more, got {devices.round}"
        )
    common = torch.from_numpy(np.asarray(shared[0], np.float32))
    n_items, dim = common.shape
    starts, epochs = _starts(devices, settings, n_items)
    n = devices.n_devices
    state = torch.from_numpy(starts)
    cut = n_items * dim
    personal = state[:, :cut].reshape(n, n_items, dim).clone()
    w, b = state[:, cut:-1].clone(), state[:, -1].clone()
    tables = common.expand(n, -1, -1).clone()
    lam, mu = settings.weights(devices.round)
    score_lr, item_lr = settings.rates(devices.round)
    decay = settings.weight_decay
    rows = torch.arange(n)[:, None]
    steps = torch.zeros(n, dtype=torch.float64)
    total, seen = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    running = torch.ones(n)
    previous = torch.zeros(n, dtype=torch.float64)
    with torch.no_grad():
        for epoch, (items_np, labels_np, mask_np) in enumerate(epochs):
            items, labels = torch.from_numpy(items_np), torch.from_numpy(labels_np)
            mask = torch.from_numpy(mask_np) * running[:, None, None]
            for k in range(items.shape[1]):
                it, y, m = items[:, k], labels[:, k], mask[:, k]
                count = m.sum(1)
                active = (count > 0).float()
                scale = m / count.clamp_min(1.0)[:, None]  # the batch mean, padding out
                cell = (scale / dim)[..., None]  # the tables' element mean
                d_rows, c_rows = personal[rows, it], tables[rows, it]  # (devices, batch, dim)
                apart = d_rows - c_rows
                logits = ((d_rows + c_rows) * w[:, None]).sum(-1) + b[:, None]
                bce = torch.nn.functional.binary_cross_entropy_with_logits(
                    logits, y, reduction="none"
                )
                loss = (
                    (bce * scale).sum(1)
                    - lam * (apart.square() * cell).sum((1, 2))
                    + mu * (c_rows.abs() * cell).sum((1, 2))
                )
                total += (loss * count).double()
                seen += count.double()
                g = (torch.sigmoid(logits) - y) * scale
                g_rows = g[..., None] * w[:, None, :]
                g_d = g_rows - 2 * lam * apart * cell
                g_c = g_rows + 2 * lam * apart * cell + mu * torch.sign(c_rows) * cell
                g_w = (g[..., None] * (d_rows + c_rows)).sum(1) + decay * active[:, None] * w
                g_b = g.sum(1) + decay * active * b
                shrink = settings.step_decay**steps
                lr_s, lr_i = (score_lr * shrink).float(), (item_lr * shrink).float() * active
                w = w - lr_s[:, None] * g_w
                b = b - lr_s * g_b
                flat = (rows * n_items + it).ravel()
                for table, grad in ((personal, g_d), (tables, g_c)):
                    table *= (1 - lr_i * decay)[:, None, None]
                    step = -lr_i[:, None, None] * grad
                    table.view(-1, dim).index_add_(0, flat, step.reshape(-1, dim))
                steps += active.double()
            mean = total / seen.clamp_min(1.0)
            if epoch > 0:  # stop where the running mean moved by less than tol of itself
                still = (mean - previous).abs() >= settings.tol * previous.abs()
                running = running * still.float()
            previous = mean
    losses = (total / seen.clamp_min(1.0)).numpy()
    states = torch.cat([personal.reshape(n, cut), w, b[:, None]], 1)
    return Additive(common=tables, states=states, losses=losses)


@register_model("fedrap")
class FedRAP(ItemTableModel):
    """FedRAP (see module docstring); settings: :class:`FedRAPSettings`."""

    settings_class = FedRAPSettings
    display_name = "FedRAP"
    settings_field = "fedrap"
    # the reference code's plain mean of the devices' global tables; a coordinate moves by
    # up to a few units in a round at its learning rates
    update_range = 8.0
    server_optimizer = {"name": "fedavg", "lr": 1.0}
    settings: FedRAPSettings

    def device_updates(self, shared: list[np.ndarray], devices: DeviceInputs) -> DeviceUpdates:
        """Each device's step (:func:`additive_step`): the dense change of ``C`` is
        uploaded, ``[D_u, w, b]`` kept."""
        step = additive_step(shared, devices, self.settings)
        return self.table_updates(shared, step.common, step.states, step.losses)

    def scores(self, shared: list[np.ndarray], devices: DeviceInputs) -> torch.Tensor:
        """Every item scored by ``(C + D_u) · w + b`` from each device's stored state (the
        initial one for a device that has not trained)."""
        common = torch.from_numpy(np.asarray(shared[0], np.float32))
        n_items, dim = common.shape
        parts = []
        for start in range(0, devices.n_devices, _SCORING_CHUNK):
            rows = range(start, min(start + _SCORING_CHUNK, devices.n_devices))
            states = torch.from_numpy(
                np.stack([_state(devices, d, self.settings, n_items) for d in rows])
            )
            personal = states[:, : n_items * dim].reshape(len(rows), n_items, dim)
            w, b = states[:, n_items * dim : -1], states[:, -1]
            parts.append(torch.einsum("dnk,dk->dn", common + personal, w) + b[:, None])
        if not parts:
            return torch.zeros(0, self.n_items)
        return torch.cat(parts)

    def serving(
        self,
        shared: list[np.ndarray],
        table: Callable[[str], ItemTable] | None = None,
        cache: MutableMapping[str, np.ndarray] | None = None,
    ) -> Serving:
        """``C`` scored against ``w`` from one step (round 1) from the initial state on
        the person's history; ``previous`` is not read (``D_u`` is not in the release); no
        bias (``b`` shifts every item alike)."""
        items = table("items.weight") if table is not None else ItemTable.dense(shared[0])
        settings, n_items = self.settings, self.n_items
        dim = settings.dim

        def user(rows: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
            inputs = DeviceInputs(
                history=UserItems.single(rows, n_items=len(items)),
                seeds=np.array([len(rows)], np.uint64),
                round=1,
            )
            state = additive_step(shared, inputs, settings).states[0].numpy()
            return split_state(state, n_items, dim)[1].copy()

        return Serving(items, np.zeros(len(items), np.float32), user)
