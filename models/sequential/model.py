"""The sequential model (``--model sequential``): a SASRec-style causal transformer over a
person's recent history, trained next-item with sampled softmax.

**Items**: a per-item id embedding plus a two-layer MLP over the catalogue's public content
features (``stamen.models.two_tower.features``), and a bias of each; an item nobody has
touched is embedded from its content alone (``content=False``: ids only).
**Sequence**: the ``max_history`` most recent items (left-padded), each item's embedding
plus a learned position counted from the most recent one, through ``blocks`` pre-norm
transformer blocks (causal single-head self-attention, then a feed-forward layer, each
with a residual connection) and a final layer norm. The state at position ``t`` sees the
items at ``<= t`` only; the state after the last item is the person's user vector, and
the score of an item is ``user · item + bias``.

The training examples of one device are its own sequence: every position predicts the
item that followed it. The last ``max_history + 1`` items give ``max_history`` examples;
with ``train_windows`` W > 1 the last ``W · max_history + 1`` items are cut into W
consecutive windows of ``max_history + 1`` (each sharing its first item with the previous
window's last, so every item is predicted once), each read as if the history ended there,
so a long history trains all its positions and not its latest ones only. The loss is
``stamen.models.two_tower.sampled_softmax``'s against ``negatives`` catalogue items drawn
on the device (uniformly: every device holds the same public catalogue and nothing about
anyone else's; their log-Q term is then one constant), averaged over the examples, or the
full softmax with ``negatives=0``. Dropout (``dropout``) is applied to the inputs and to
each block's two outputs with masks drawn from the device's own seed, so a device's step
never depends on the batch it runs in. The device step is ``local_epochs`` SGD steps,
batch-first through ``stamen.models.device_step``; every weight is shared (federated), and
the history never leaves the device. Serving recomputes the user vector from the history
on every event (``Serving.user``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, cast

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.func import functional_call

from stamen.models.batches import UserItems
from stamen.models.bundle import ReleaseCatalog
from stamen.models.device_step import functional_sgd
from stamen.models.quantize import ItemTable
from stamen.models.registry import DeviceInputs, DeviceUpdates, RecModel, Serving, register_model
from stamen.models.two_tower.content import ContentItems
from stamen.models.two_tower.model import padded_histories
from stamen.models.two_tower.sampled_softmax import full_softmax_loss, sampled_softmax_loss

__all__ = ["Block", "Sequential", "SequentialNet", "SequentialSettings"]

#: Logit of a position an attention row may not see (finite, so no row is all -inf).
_HIDDEN = -1e9


class SequentialSettings(BaseModel):
    """Hyper-parameters of the sequential model and its device step."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dim: int = Field(64, gt=0, description="width of item embeddings and of the blocks")
    hidden: int = Field(64, gt=0, description="hidden width of the content MLP")
    blocks: int = Field(2, ge=1, description="transformer blocks")
    max_history: int = Field(50, ge=1, description="most recent items the model reads")
    content: bool = Field(True, description="add the content MLP to the id embedding")
    title_buckets: int = Field(256, ge=0, description="hash buckets of title tokens")
    dropout: float = Field(0.2, ge=0, lt=1, description="dropout rate in training")
    negatives: int = Field(256, ge=0, description="sampled negatives per step; 0: full softmax")
    train_windows: int = Field(
        1, ge=1, description="windows of max_history items a device trains on, latest first"
    )
    init_std: float = Field(0.05, gt=0)
    local_epochs: int = Field(1, ge=1)
    local_lr: float = Field(1.0, gt=0)
    weight_decay: float = Field(0.0, ge=0)

    def to_config(self) -> dict[str, bool | bytes | float | int | str]:
        """Flat form for a Flower ``FitIns.config``."""
        return dict(self.model_dump())


class Block(nn.Module):
    """One pre-norm transformer block's weights: causal self-attention, then a
    feed-forward layer (the computation is :meth:`SequentialNet.states`)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.feed_norm = nn.LayerNorm(dim)
        self.feed_in = nn.Linear(dim, dim)
        self.feed_out = nn.Linear(dim, dim)


class SequentialNet(nn.Module):
    """The model's weights; the methods are the computations (called through
    ``torch.func.functional_call`` with the shared arrays as parameters)."""

    def __init__(self, n_items: int, n_features: int, settings: SequentialSettings) -> None:
        super().__init__()
        s = settings
        self.settings = s
        self.item_ids = nn.Embedding(n_items, s.dim)
        self.item_bias = nn.Embedding(n_items, 1)
        if s.content:
            self.content_hidden = nn.Linear(n_features, s.hidden)
            self.content_out = nn.Linear(s.hidden, s.dim)
            self.content_bias = nn.Linear(s.hidden, 1)
        self.positions = nn.Embedding(s.max_history, s.dim)
        self.blocks = nn.ModuleList(Block(s.dim) for _ in range(s.blocks))
        self.out_norm = nn.LayerNorm(s.dim)

    def reset(self, generator: torch.Generator) -> None:
        """Seeded initial values: N(0, init_std²) weights, zero biases, unit norm gains."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                if "norm" in name and name.endswith("weight"):
                    p.fill_(1.0)
                elif name.endswith("bias") or name == "item_bias.weight":
                    p.zero_()
                else:
                    p.normal_(0.0, self.settings.init_std, generator=generator)

    def forward(self, method: str, *args: torch.Tensor) -> Any:
        """Dispatch to ``method`` (so that ``functional_call`` can reach every method)."""
        return getattr(self, method)(*args)

    def items(self, features: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings ``(..., dim)`` and biases ``(...)`` of items with these content
        ``features (..., F)`` and indices ``ids (...)``."""
        emb, bias = self.item_ids(ids), self.item_bias(ids)[..., 0]
        if self.settings.content:
            hidden = torch.relu(self.content_hidden(features))
            emb = emb + self.content_out(hidden)
            bias = bias + self.content_bias(hidden)[..., 0]
        return emb, bias

    def states(self, emb: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The state ``(..., L, dim)`` after each position of left-padded history
        embeddings ``emb (..., L, dim)`` with ``mask (..., L)``; ``keep (..., 1 + 2 blocks,
        L, dim)`` are the dropout masks (already scaled; ones when not training). Position
        ``t`` reads the valid items at ``<= t``; a padded position reads itself only."""
        length = emb.shape[-2]
        valid = mask[..., None]
        positions = self.positions.weight[len(self.positions.weight) - length :]
        x = (emb + positions) * keep[..., 0, :, :] * valid
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        allowed = (causal & (mask[..., None, :] > 0)) | torch.eye(length, dtype=torch.bool)
        scale = float(np.sqrt(x.shape[-1]))
        for b, module in enumerate(self.blocks):
            block = cast(Block, module)
            h = block.attention_norm(x)
            q, k, v = block.query(h), block.key(h), block.value(h)
            logits = torch.where(allowed, q @ k.transpose(-1, -2) / scale, _HIDDEN)
            x = x + torch.softmax(logits, dim=-1) @ v * keep[..., 1 + 2 * b, :, :]
            h = block.feed_norm(x)
            x = x + block.feed_out(torch.relu(block.feed_in(h))) * keep[..., 2 + 2 * b, :, :]
            x = x * valid
        return self.out_norm(x)


@register_model("sequential")
class Sequential(ContentItems, RecModel):
    """The sequential model (see module docstring); settings: :class:`SequentialSettings`."""

    settings_class = SequentialSettings
    display_name = "sequential"
    settings_field = "sequential"
    settings: SequentialSettings

    def __init__(self, settings: SequentialSettings, catalog: ReleaseCatalog) -> None:
        super().__init__(settings, catalog)
        self.net = SequentialNet(self.n_items, self.feature_width(), settings)
        self._names = tuple(name for name, _ in self.net.named_parameters())
        #: log Q of the uniform proposal the device draws its negatives from
        self.log_q = float(np.log(max(settings.negatives, 1) / self.n_items))

    def shared_names(self) -> tuple[str, ...]:
        """The network's parameter names (``nn.Module`` order)."""
        return self._names

    def init_shared(self, seed: int) -> list[np.ndarray]:
        """Seeded initial weights (:meth:`SequentialNet.reset`)."""
        self.net.reset(torch.Generator().manual_seed(seed))
        return [p.detach().numpy().copy() for p in self.net.parameters()]

    def quantizable(self) -> tuple[str, ...]:
        """The item-id embedding."""
        return ("item_ids.weight",)

    def _params(self, shared: list[np.ndarray]) -> dict[str, torch.Tensor]:
        self.check_shared(shared)
        return {
            n: torch.as_tensor(np.asarray(a, np.float32))
            for n, a in zip(self._names, shared, strict=True)
        }

    def dropout_masks(self, seeds: np.ndarray, windows: int, length: int) -> torch.Tensor:
        """Scaled dropout masks ``(devices, epochs, windows, 1 + 2 blocks, length, dim)``,
        each device's drawn from its own seed for all ``train_windows`` windows of
        ``max_history`` positions and aligned to the most recent ones (so the batch's
        padded shape changes no device's masks)."""
        s = self.settings
        shape = (s.local_epochs, s.train_windows, 1 + 2 * s.blocks, s.max_history, s.dim)
        masks = np.stack(
            [np.random.default_rng([int(seed), 2]).random(shape) >= s.dropout for seed in seeds]
        )[:, :, s.train_windows - windows :, :, s.max_history - length :, :]
        return torch.from_numpy(masks.astype(np.float32) / (1.0 - s.dropout))

    def training_windows(self, history: UserItems) -> tuple[np.ndarray, np.ndarray]:
        """Item indices and masks ``(rows, windows, length + 1)`` of each row's training
        windows (module docstring), oldest first, left-padded with masked item 0; as few
        windows (at most ``train_windows``) and positions (at most ``max_history``) as the
        longest row needs."""
        s = self.settings
        items, mask = padded_histories(history, s.train_windows * s.max_history + 1)
        length = min(items.shape[1] - 1, s.max_history) or 1
        windows = max(-(-(items.shape[1] - 1) // length), 1)
        pad = windows * length + 1 - items.shape[1]
        items = np.pad(items, ((0, 0), (pad, 0)))
        mask = np.pad(mask, ((0, 0), (pad, 0)))
        cells = np.arange(windows)[:, None] * length + np.arange(length + 1)
        return items[:, cells], mask[:, cells]

    def device_updates(self, shared: list[np.ndarray], devices: DeviceInputs) -> DeviceUpdates:
        """``local_epochs`` SGD steps per device on its next-item examples (batch-first)."""
        s = self.settings
        params = self._params(shared)
        items, mask = self.training_windows(devices.history)
        windows, length = items.shape[1], items.shape[2] - 1
        if windows == 1:  # one window: no window axis (the arithmetic of one sequence)
            items, mask = np.ascontiguousarray(items[:, 0]), np.ascontiguousarray(mask[:, 0])
        inputs = {
            "items": torch.from_numpy(items),
            "mask": torch.from_numpy(mask),
            "keep": (
                self.dropout_masks(devices.seeds, windows, length)
                if s.dropout
                else torch.ones(devices.n_devices, s.local_epochs, 1, 1 + 2 * s.blocks, 1, 1)
            )[:, :, 0 if windows == 1 else slice(None)],
        }
        if s.negatives:
            inputs["negatives"] = torch.from_numpy(
                np.stack(
                    [
                        np.random.default_rng(int(seed)).integers(
                            0, self.n_items, size=(s.local_epochs, s.negatives)
                        )
                        for seed in devices.seeds
                    ]
                )
            )
        net, features, log_q = self.net, self.features, self.log_q

        def loss(
            p: dict[str, torch.Tensor], x: Mapping[str, torch.Tensor], epoch: int
        ) -> torch.Tensor:
            history, targets = x["items"][..., :-1], x["items"][..., 1:].reshape(-1)
            valid = (x["mask"][..., :-1] * x["mask"][..., 1:]).reshape(-1)
            emb, _ = functional_call(net, p, ("items", features[history], history))
            keep = x["keep"][epoch]
            states = functional_call(net, p, ("states", emb, x["mask"][..., :-1], keep))
            users = states.reshape(-1, states.shape[-1])
            if not s.negatives:
                all_emb, all_bias = functional_call(
                    net, p, ("items", features, torch.arange(len(features)))
                )
                return full_softmax_loss(users, all_emb, all_bias, targets, valid)
            negatives = x["negatives"][epoch]
            target_emb, target_bias = functional_call(net, p, ("items", features[targets], targets))
            neg_emb, neg_bias = functional_call(net, p, ("items", features[negatives], negatives))
            return sampled_softmax_loss(
                users,
                target_emb,
                target_bias,
                torch.full(targets.shape, log_q),
                targets,
                valid,
                neg_emb,
                neg_bias,
                torch.full(negatives.shape, log_q),
                negatives,
                in_batch=False,
            )

        deltas, losses = functional_sgd(
            loss, params, inputs, epochs=s.local_epochs, lr=s.local_lr, weight_decay=s.weight_decay
        )
        out = [deltas[name].detach().numpy() for name in self._names]
        return DeviceUpdates(out, (None,) * devices.n_devices, losses.detach().double().numpy())

    def _users(
        self, params: dict[str, torch.Tensor], item_emb: torch.Tensor, devices: DeviceInputs
    ) -> torch.Tensor:
        return _user_vectors(self.net, params, item_emb, devices.history)

    def user_embeddings(self, shared: list[np.ndarray], devices: DeviceInputs) -> torch.Tensor:
        """Each device's user vector ``(devices, dim)``: the state after its last item."""
        item_emb, _ = self.item_embeddings(shared)
        return self._users(self._params(shared), item_emb, devices)

    def scores(self, shared: list[np.ndarray], devices: DeviceInputs) -> torch.Tensor:
        """``user · item + bias`` for every catalogue item."""
        item_emb, item_bias = self.item_embeddings(shared)
        return self._users(self._params(shared), item_emb, devices) @ item_emb.T + item_bias

    def serving(
        self,
        shared: list[np.ndarray],
        table: Callable[[str], ItemTable] | None = None,
        cache: MutableMapping[str, np.ndarray] | None = None,
    ) -> Serving:
        """The item side once per release; the user vector recomputed from the history
        (its last ``max_history`` items) on every event. The item side is read from
        ``cache`` where a device kept it (:meth:`served_items`)."""
        item_emb, item_bias = self.served_items(shared, cache)
        params, net = self._params(shared), self.net  # not the model: its features can go
        n_items, window = self.n_items, self.settings.max_history

        def user(rows: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
            recent = np.asarray(rows, np.int64)[-window:]
            history = UserItems.single(recent, n_items=n_items)
            return _user_vectors(net, params, item_emb, history)[0].numpy()

        return Serving(ItemTable.dense(item_emb.numpy()), item_bias.numpy(), user)


def _user_vectors(
    net: SequentialNet,
    params: dict[str, torch.Tensor],
    item_emb: torch.Tensor,
    history: UserItems,
) -> torch.Tensor:
    """Each row's user vector ``(rows, dim)``: the state after its last item (of the last
    ``max_history``), the zero vector for an empty row (the score is then the bias)."""
    items, mask = padded_histories(history, net.settings.max_history)
    mask_t = torch.from_numpy(mask)
    keep = torch.ones(1 + 2 * net.settings.blocks, 1, 1)  # no dropout
    with torch.no_grad():
        states = functional_call(
            net, params, ("states", item_emb[torch.from_numpy(items)], mask_t, keep)
        )
    return states[:, -1] * (mask_t[:, -1:] > 0)
