"""The two-tower retrieval model (``--model two-tower``).

**Item tower**: a two-layer MLP over the catalogue's public content features
(``stamen.models.two_tower.features``: genres or tags, release decade, hashed title tokens), plus,
optionally, a per-item id embedding and id bias (``item_ids=True``); without them the
tower is content-only and embeds an item nobody has touched as well as any other.
**User tower**: over the device's own history of item-tower embeddings, either mean-pooled
(``user_tower="mean"``) or a SASRec-style causal self-attention layer with learned
positions over the ``max_history`` most recent items (``"sequence"``), plus on-device user
attributes (MovieLens-100K ``u.user``) when the data set has them, plus (``context=True``)
learned hour-of-day and weekday embeddings of the request (``stamen.models.two_tower.context``):
in training the context of each target event, in serving the context of the call. The
score of an item is the dot product of the towers plus the item's bias.

Both towers' weights are shared (federated); every input of the user tower (history,
attributes, contexts) stays on the device. The training examples of one device: with the mean tower,
each of its items predicted from the mean of the others (leave-one-out); with the sequence
tower, each item predicted from the ones before it. The loss is a separate wrapper
(``stamen.models.two_tower.sampled_softmax``): sampled softmax against ``negatives`` catalogue
negatives with the log-Q correction, or the full softmax with ``negatives=0``. The device
step is ``local_epochs`` SGD steps, batch-first through ``stamen.models.device_step``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, Literal

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
from stamen.models.two_tower.context import UNKNOWN_CONTEXT, UNKNOWN_HOUR, UNKNOWN_WEEKDAY
from stamen.models.two_tower.sampled_softmax import full_softmax_loss, sampled_softmax_loss

__all__ = ["TwoTower", "TwoTowerNet", "TwoTowerSettings", "padded_contexts", "padded_histories"]


class TwoTowerSettings(BaseModel):
    """Hyper-parameters of the two-tower model and its device step."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dim: int = Field(64, gt=0, description="embedding dimension of both towers")
    hidden: int = Field(64, gt=0, description="hidden width of the item tower's MLP")
    item_ids: bool = Field(True, description="add a per-item id embedding and bias")
    user_tower: Literal["mean", "sequence"] = "mean"
    max_history: int = Field(50, ge=1, description="most recent items the sequence tower reads")
    title_buckets: int = Field(256, ge=0, description="hash buckets of title tokens")
    attribute_width: int = Field(0, ge=0, description="width of on-device user attributes")
    context: bool = Field(False, description="add hour-of-day and weekday embeddings")
    context_dropout: float = Field(
        0.1, ge=0, le=1, description="share of training examples whose context is hidden"
    )
    negatives: int = Field(512, ge=0, description="sampled negatives per step; 0: full softmax")
    in_batch: bool = Field(False, description="use the other examples' targets as negatives")
    init_std: float = Field(0.1, gt=0)
    local_epochs: int = Field(1, ge=1)
    local_lr: float = Field(0.5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    update_weighting: Literal["uniform", "positives"] = "uniform"

    def to_config(self) -> dict[str, bool | bytes | float | int | str]:
        """Flat form for a Flower ``FitIns.config``."""
        return dict(self.model_dump())


class TwoTowerNet(nn.Module):
    """The towers' weights; the methods are the computations (called through
    ``torch.func.functional_call`` with the shared arrays as parameters)."""

    def __init__(self, n_items: int, n_features: int, settings: TwoTowerSettings) -> None:
        super().__init__()
        s = settings
        self.settings = s
        self.item_hidden = nn.Linear(n_features, s.hidden)
        self.item_out = nn.Linear(s.hidden, s.dim)
        self.item_bias_content = nn.Linear(s.hidden, 1)
        if s.item_ids:
            self.item_ids = nn.Embedding(n_items, s.dim)
            self.item_bias = nn.Embedding(n_items, 1)
        self.user_out = nn.Linear(s.dim, s.dim)
        if s.user_tower == "sequence":
            self.positions = nn.Embedding(s.max_history, s.dim)
            self.query = nn.Linear(s.dim, s.dim, bias=False)
            self.key = nn.Linear(s.dim, s.dim, bias=False)
            self.value = nn.Linear(s.dim, s.dim, bias=False)
        if s.attribute_width:
            self.attributes = nn.Linear(s.attribute_width, s.dim, bias=False)
        if s.context:  # the last row of each is "unknown"
            self.hours = nn.Embedding(UNKNOWN_HOUR + 1, s.dim)
            self.weekdays = nn.Embedding(UNKNOWN_WEEKDAY + 1, s.dim)

    def reset(self, generator: torch.Generator) -> None:
        """Seeded initial values: N(0, init_std²) weights, zero biases and id tables."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                if (
                    name.endswith("bias")
                    or name.startswith("item_ids")
                    or name == "item_bias.weight"
                ):
                    p.zero_()
                else:
                    p.normal_(0.0, self.settings.init_std, generator=generator)

    def forward(self, method: str, *args: torch.Tensor) -> Any:
        """Dispatch to ``method`` (so that ``functional_call`` can reach every method)."""
        return getattr(self, method)(*args)

    def items(self, features: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings ``(..., dim)`` and biases ``(...)`` of items with these content
        ``features (..., F)`` and indices ``ids (...)``."""
        hidden = torch.relu(self.item_hidden(features))
        emb = self.item_out(hidden)
        bias = self.item_bias_content(hidden)[..., 0]
        if self.settings.item_ids:
            emb = emb + self.item_ids(ids)
            bias = bias + self.item_bias(ids)[..., 0]
        return emb, bias

    def _attend(self, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Causal self-attention over left-padded ``emb (..., L, dim)``: position ``t``
        summarises the valid items at ``<= t`` (itself included)."""
        length = emb.shape[-2]
        x = emb + self.positions.weight[-length:]
        q, k, v = self.query(x), self.key(x), self.value(x)
        logits = q @ k.transpose(-1, -2) / float(np.sqrt(x.shape[-1]))
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        itself = torch.eye(length, dtype=torch.bool)  # a padded position sees itself only
        allowed = (causal & (mask[..., None, :] > 0)) | itself
        logits = torch.where(allowed, logits, -1e9)
        return x + torch.softmax(logits, dim=-1) @ v

    def user_context(self, attributes: torch.Tensor) -> torch.Tensor:
        """The attributes' contribution ``(..., dim)`` to the user vector."""
        return self.attributes(attributes)

    def context_term(self, contexts: torch.Tensor) -> torch.Tensor:
        """The contribution ``(..., dim)`` of contexts ``(..., 2)`` to the user vector."""
        return self.hours(contexts[..., 0]) + self.weekdays(contexts[..., 1])

    def users(
        self,
        emb: torch.Tensor,
        mask: torch.Tensor,
        attributes: torch.Tensor,
        query: torch.Tensor | None,
    ) -> torch.Tensor:
        """User vectors ``(B, dim)`` from left-padded history embeddings ``(B, L, dim)``
        and the request contexts ``query (B, 2)`` (``None``: no context term, which
        serving adds per call)."""
        count = mask.sum(-1, keepdim=True)
        if self.settings.user_tower == "mean":
            pooled = (emb * mask[..., None]).sum(-2) / count.clamp_min(1.0)
        else:
            pooled = self._attend(emb, mask)[..., -1, :] * (count > 0)
        out = self.user_out(pooled)
        if self.settings.attribute_width:
            out = out + self.user_context(attributes)
        if self.settings.context and query is not None:
            out = out + self.context_term(query)
        return out

    def examples(
        self,
        emb: torch.Tensor,
        items: torch.Tensor,
        mask: torch.Tensor,
        attributes: torch.Tensor,
        contexts: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One device's training examples from its left-padded history ``(L,)`` and its
        events' contexts ``(L, 2)``: user vectors ``(E, dim)`` (each with its target
        event's context), target items ``(E,)`` and the example mask ``(E,)``."""
        if self.settings.user_tower == "mean":
            total = (emb * mask[:, None]).sum(0)
            others = (mask.sum() - 1.0).clamp_min(1.0)
            pooled = (total[None] - emb) / others
            users, targets, valid = self.user_out(pooled), items, mask
        else:
            states = self._attend(emb, mask)[:-1]
            users, targets, valid = self.user_out(states), items[1:], mask[:-1] * mask[1:]
            contexts = contexts[1:]
        if self.settings.attribute_width:
            users = users + self.user_context(attributes)[None]
        if self.settings.context:
            users = users + self.context_term(contexts)
        return users, targets, valid


def _padding(history: UserItems, length: int | None) -> tuple[int, tuple, np.ndarray]:
    """Width, ``(rows, columns)`` cells and source positions of the left-padded layout of
    each row's last ``length`` items (all of them with ``None``)."""
    counts = history.counts()
    if length is not None:
        counts = np.minimum(counts, length)
    width = max(int(counts.max()) if len(counts) else 0, 1)
    rows = np.repeat(np.arange(history.n_users), counts)
    # position j of a row's last n items: column width - n + j, item indptr[row+1] - n + j
    offsets = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    taken = np.repeat(history.indptr[1:] - counts, counts) + offsets
    columns = np.repeat(width - counts, counts) + offsets
    return width, (rows, columns), taken


def padded_histories(history: UserItems, length: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded item indices and masks ``(rows, L)`` of each row's last ``length`` items
    (all of them with ``None``); padding is item 0 with mask 0."""
    width, cells, taken = _padding(history, length)
    items = np.zeros((history.n_users, width), np.int64)
    mask = np.zeros((history.n_users, width), np.float32)
    items[cells] = history.items[taken]
    mask[cells] = 1.0
    return items, mask


def padded_contexts(history: UserItems, length: int | None) -> np.ndarray:
    """The event contexts ``(rows, L, 2)`` in :func:`padded_histories`' layout; padding and
    events without a known context are unknown."""
    width, cells, taken = _padding(history, length)
    out = np.empty((history.n_users, width, 2), np.int64)
    out[:] = UNKNOWN_CONTEXT
    if history.contexts is not None:
        out[cells] = history.contexts[taken]
    return out


@register_model("two-tower")
class TwoTower(ContentItems, RecModel):
    """The two-tower model (see module docstring); settings: :class:`TwoTowerSettings`.

    Catalogue negatives are drawn uniformly on the device (every device holds the same
    public catalogue and nothing about anyone else's), so their log-Q term is a constant;
    the loss wrapper takes any proposal (in-batch negatives arrive by frequency).
    """

    settings_class = TwoTowerSettings
    display_name = "two-tower"
    settings_field = "two_tower"
    settings: TwoTowerSettings

    def __init__(self, settings: TwoTowerSettings, catalog: ReleaseCatalog) -> None:
        super().__init__(settings, catalog)
        self.net = TwoTowerNet(self.n_items, self.feature_width(), settings)
        self._names = tuple(name for name, _ in self.net.named_parameters())
        self.proposal = np.full(self.n_items, 1.0 / self.n_items)
        self.log_q = torch.from_numpy(np.log(self.proposal).astype(np.float32))

    def shared_names(self) -> tuple[str, ...]:
        """The towers' parameter names (``nn.Module`` order)."""
        return self._names

    def init_shared(self, seed: int) -> list[np.ndarray]:
        """Seeded initial weights (:meth:`TwoTowerNet.reset`)."""
        self.net.reset(torch.Generator().manual_seed(seed))
        return [p.detach().numpy().copy() for p in self.net.parameters()]

    def _params(self, shared: list[np.ndarray]) -> dict[str, torch.Tensor]:
        self.check_shared(shared)
        return {
            n: torch.as_tensor(np.asarray(a, np.float32))
            for n, a in zip(self._names, shared, strict=False)
        }

    def _attributes(self, devices: DeviceInputs) -> torch.Tensor:
        width = self.settings.attribute_width
        if devices.attributes is None:
            if width:
                raise ValueError(f"the model reads {width} user attributes; none were given")
            return torch.zeros(devices.n_devices, 0)
        if devices.attributes.shape[1] != width:
            raise ValueError(
                f"{devices.attributes.shape[1]} user attributes, the model reads {width}"
            )
        return torch.as_tensor(np.asarray(devices.attributes, np.float32))

    def _length(self) -> int | None:
        return self.settings.max_history if self.settings.user_tower == "sequence" else None

    def _history(self, devices: DeviceInputs) -> tuple[torch.Tensor, torch.Tensor]:
        items, mask = padded_histories(devices.history, self._length())
        return torch.from_numpy(items), torch.from_numpy(mask)

    def _contexts(self, devices: DeviceInputs) -> torch.Tensor:
        """Training contexts, each hidden (unknown) with probability ``context_dropout``
        by the device's own seed, so the "unknown" rows learn too."""
        contexts = padded_contexts(devices.history, self._length())
        width = contexts.shape[1]
        hide = np.zeros(contexts.shape[:2], bool)
        counts = np.minimum(devices.history.counts(), width)
        # one draw per event of the device: never depends on the batch it runs in
        for d, (seed, n) in enumerate(zip(devices.seeds, counts, strict=True)):
            draws = np.random.default_rng([int(seed), 1]).random(int(n))
            hide[d, width - n :] = draws < self.settings.context_dropout
        contexts[hide] = UNKNOWN_CONTEXT
        return torch.from_numpy(contexts)

    @staticmethod
    def _query(devices: DeviceInputs) -> torch.Tensor:
        if devices.query is None:
            return torch.tensor([UNKNOWN_CONTEXT] * devices.n_devices, dtype=torch.int64)
        return torch.as_tensor(np.asarray(devices.query, np.int64))

    def device_updates(self, shared: list[np.ndarray], devices: DeviceInputs) -> DeviceUpdates:
        """``local_epochs`` SGD steps per device on its examples (batch-first)."""
        s = self.settings
        params = self._params(shared)
        items, mask = self._history(devices)
        inputs = {
            "items": items,
            "mask": mask,
            "attributes": self._attributes(devices),
            # the context dropout draws run only for a model that reads context
            "contexts": (
                self._contexts(devices)
                if s.context
                else torch.zeros((devices.n_devices, 0), dtype=torch.int64)
            ),
        }
        if s.negatives:
            draws = np.stack(
                [
                    np.random.default_rng(int(seed)).choice(
                        self.n_items, size=(s.local_epochs, s.negatives), p=self.proposal
                    )
                    for seed in devices.seeds
                ]
            )
            inputs["negatives"] = torch.from_numpy(draws)
        net, features, log_q = self.net, self.features, self.log_q

        def loss(
            p: dict[str, torch.Tensor], x: Mapping[str, torch.Tensor], epoch: int
        ) -> torch.Tensor:
            emb, _ = functional_call(net, p, ("items", features[x["items"]], x["items"]))
            users, targets, valid = functional_call(
                net, p, ("examples", emb, x["items"], x["mask"], x["attributes"], x["contexts"])
            )
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
                log_q[targets] + float(np.log(s.negatives)),
                targets,
                valid,
                neg_emb,
                neg_bias,
                log_q[negatives] + float(np.log(s.negatives)),
                negatives,
                in_batch=s.in_batch,
            )

        deltas, losses = functional_sgd(
            loss, params, inputs, epochs=s.local_epochs, lr=s.local_lr, weight_decay=s.weight_decay
        )
        out = [deltas[name].detach().numpy() for name in self._names]
        if s.update_weighting == "positives":
            weight = devices.history.counts().astype(np.float32)
            out = [d * weight.reshape((-1,) + (1,) * (d.ndim - 1)) for d in out]
        return DeviceUpdates(out, (None,) * devices.n_devices, losses.detach().double().numpy())

    def user_embeddings(self, shared: list[np.ndarray], devices: DeviceInputs) -> torch.Tensor:
        """The user tower over each device's history, attributes and request context:
        ``(devices, dim)``."""
        params = self._params(shared)
        items, mask = self._history(devices)
        with torch.no_grad():
            emb, _ = functional_call(self.net, params, ("items", self.features[items], items))
            attributes, query = self._attributes(devices), self._query(devices)
            return functional_call(self.net, params, ("users", emb, mask, attributes, query))

    def serving(
        self,
        shared: list[np.ndarray],
        table: Callable[[str], ItemTable] | None = None,
        cache: MutableMapping[str, np.ndarray] | None = None,
    ) -> Serving:
        """The item tower over the whole catalogue, once; the user tower on every event;
        the request's context term (when the model reads context) per call. The item
        side is read from ``cache`` where a device kept it (:meth:`served_items`)."""
        item_emb, item_bias = self.served_items(shared, cache)
        params = self._params(shared)
        net = self.net

        def user(rows: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
            items = torch.as_tensor(np.asarray(rows, np.int64)[-self._window() :])[None]
            mask = torch.ones(items.shape, dtype=torch.float32)
            with torch.no_grad():
                emb = item_emb[items]
                attributes = torch.zeros(1, 0)
                vector = functional_call(net, params, ("users", emb, mask, attributes, None))
                return vector[0].numpy()

        def context(row: np.ndarray) -> np.ndarray:
            query = torch.as_tensor(np.asarray(row, np.int64))
            with torch.no_grad():
                return functional_call(net, params, ("context_term", query)).numpy()

        return Serving(
            ItemTable.dense(item_emb.numpy()),
            item_bias.numpy(),
            user,
            context if self.settings.context else None,
        )

    def quantizable(self) -> tuple[str, ...]:
        """The item-id embedding (when the model has one)."""
        return ("item_ids.weight",) if self.settings.item_ids else ()

    def _window(self) -> int:
        return self.settings.max_history if self.settings.user_tower == "sequence" else 10**9

    def scores(self, shared: list[np.ndarray], devices: DeviceInputs) -> torch.Tensor:
        """``user · item + bias`` for every catalogue item."""
        item_emb, item_bias = self.item_embeddings(shared)
        return self.user_embeddings(shared, devices) @ item_emb.T + item_bias
