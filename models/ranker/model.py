"""The ranker: a small model that orders the candidates the generators proposed.

Its input is one row of :data:`FEATURES` per candidate, computed on the device
(``stamen.client.pipeline.ranking``): which generators proposed it and at what rank, the release
model's score, content affinity, trending and popularity, the item's age, the request's
context (hour, weekday, device kind) and the person's history length. Its output is a
score, higher first: a linear part ``x · w + b`` (``hidden = 0``: logistic regression;
the request's own features then shift every candidate alike and cannot change the order)
plus, for ``hidden > 0``, a two-layer ReLU network ``relu(x W1 + b1) · w2`` that can
weigh the item features by context and history length (wide and deep). It starts as the
retrieval order: ``w`` weighs the standardised retrieval score (and, for a person with
no history, the popularity list's rank) by 1 and ``w2`` starts at zero, so training
learns corrections to the first stage rather than an order from nothing.

Its weights are global, trained federatedly like the retrieval model's shared arrays
(same cohorts, clipping, noise, SecAgg+ quantisation and accountant:
``stamen.simulation.engines.ranker``) and shipped in the release bundle. A device's training
example is one list it was offered: the candidates and which of them it took; the loss
is the softmax cross-entropy of each taken candidate against the whole offered list
(listwise, the way the ranker is used). :func:`ranker_updates` is batch-first: any number
of devices, each starting from the global weights and taking ``local_steps`` full-batch
gradient steps on its own list, so one device and a cohort chunk run the same code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DEVICE_KINDS",
    "FEATURES",
    "PRIOR",
    "RANKER_METRICS",
    "RANKED_GENERATORS",
    "RankerSettings",
    "RankingExamples",
    "check_ranker",
    "init_ranker",
    "list_metrics",
    "listwise_losses",
    "ranker_hidden",
    "ranker_names",
    "ranker_scores",
    "ranker_updates",
]

#: The generators whose proposals the ranker reads (a generator registered later is not
#: a feature until the ranker's layout grows).
RANKED_GENERATORS = ("cf", "content", "trending", "fresh", "popular")
#: Device kinds a request's context may name (``context["device"]``); others: none.
DEVICE_KINDS = ("phone", "tablet", "desktop", "tv")

#: The ranker's input columns, in order (``stamen.client.pipeline.ranking`` computes them).
FEATURES: tuple[str, ...] = (
    *(f"proposed:{g}" for g in RANKED_GENERATORS),  # 1 if the generator proposed it
    *(f"rank:{g}" for g in RANKED_GENERATORS),  # 1 / log2(2 + rank), 0 if not proposed
    "cf_score",  # the release model's score (0 without a user vector)
    "cf_z",  # that score standardised over the candidates
    "content",  # cosine of the item's genres with the person's profile
    "trending",  # log1p(count) / log1p(largest count)
    "popularity",  # the release's popularity (learned item bias)
    "popularity_z",  # standardised over the candidates
    "age",  # log1p(days since first seen) / log1p(3650)
    "age_unknown",
    "hour_sin",
    "hour_cos",
    "weekday_sin",
    "weekday_cos",  # hour and weekday: the request's, else the device clock's
    *(f"device:{kind}" for kind in DEVICE_KINDS),
    "history",  # log1p(history length) / log1p(1000)
)


class RankerSettings(BaseModel):
    """The ranker's shape and its device step."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hidden: int = Field(16, ge=0, description="hidden units (0: logistic regression)")
    # chosen on MovieLens-100K: the training loss of the devices' replayed lists fell from
    # 5.05 to 4.83 in 300 rounds of 64 (FedAvg, server lr 1); at local lr 0.1 it rose
    local_lr: float = Field(0.02, gt=0, description="learning rate of the device's steps")
    local_steps: int = Field(5, ge=1, description="full-batch gradient steps per round")
    weight_decay: float = Field(1e-4, ge=0, description="L2 penalty in the device's loss")

    def to_config(self) -> dict[str, int | float]:
        """Flat form for a Flower ``FitIns.config`` (``ranker-`` keys)."""
        return {f"ranker-{k.replace('_', '-')}": v for k, v in self.model_dump().items()}

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> RankerSettings:
        """The settings a request's ``config`` carries (:meth:`to_config`'s keys; missing:
        an error, a device does not guess its step)."""
        try:
            values = {k: config[f"ranker-{k.replace('_', '-')}"] for k in cls.model_fields}
        except KeyError as missing:
            raise ValueError(f"a ranker request lacks {missing}") from None
        return cls.model_validate(values)


def ranker_names(settings: RankerSettings) -> tuple[str, ...]:
    """Names of the ranker's arrays, in order."""
    return ("w", "b", "w1", "b1", "w2") if settings.hidden else ("w", "b")


#: The linear part's start: the retrieval order (see module docstring).
PRIOR = {"cf_z": 1.0, "rank:popular": 1.0}


def init_ranker(settings: RankerSettings, seed: int) -> list[np.ndarray]:
    """Seeded initial weights (float32): the linear part at :data:`PRIOR`, a He-scaled
    first hidden layer, zero biases and a zero output layer."""
    n = len(FEATURES)
    w = np.zeros(n, np.float32)
    for name, value in PRIOR.items():
        w[FEATURES.index(name)] = value
    linear = [w, np.zeros(1, np.float32)]
    if not settings.hidden:
        return linear
    rng = np.random.default_rng([seed, 0x52414E4B])  # "RANK"
    h = settings.hidden
    return linear + [
        rng.normal(0.0, np.sqrt(2.0 / n), (n, h)).astype(np.float32),
        np.zeros(h, np.float32),
        np.zeros(h, np.float32),
    ]


def ranker_hidden(weights: list[np.ndarray]) -> int:
    """Hidden units of the ranker ``weights`` (0: logistic regression)."""
    check_ranker(weights)
    return int(np.shape(weights[2])[1]) if len(weights) == 5 else 0


def check_ranker(weights: list[np.ndarray]) -> None:
    """Raise ``ValueError`` unless ``weights`` are a ranker over :data:`FEATURES`."""
    n = len(FEATURES)
    shapes = [tuple(np.shape(w)) for w in weights]
    if shapes[:2] == [(n,), (1,)]:
        if len(shapes) == 2:
            return
        if len(shapes) == 5 and len(shapes[2]) == 2 and shapes[2][0] == n:
            h = shapes[2][1]
            if shapes[3:] == [(h,), (h,)]:
                return
    raise ValueError(f"not a ranker over {n} features: array shapes {shapes}")


def ranker_scores(weights: list[np.ndarray], features: np.ndarray) -> np.ndarray:
    """Scores ``(n,)`` of ``features`` ``(n, len(FEATURES))`` (numpy: the device's path)."""
    x = np.asarray(features, np.float32)
    score = x @ weights[0] + weights[1][0]
    if len(weights) == 5:
        w1, b1, w2 = weights[2:]
        score = score + np.maximum(x @ w1 + b1, 0.0) @ w2
    return score


@dataclass(frozen=True)
class RankingExamples:
    """Offered lists of a batch of devices, zero-padded: ``features[d, i]`` is candidate
    ``i`` of device ``d``'s list, ``taken[d, i]`` whether the person took it, ``offered``
    which entries are real (not padding)."""

    features: np.ndarray
    taken: np.ndarray
    offered: np.ndarray

    def __post_init__(self) -> None:
        d, n, f = self.features.shape
        if f != len(FEATURES):
            raise ValueError(f"examples have {f} features, the ranker reads {len(FEATURES)}")
        if self.taken.shape != (d, n) or self.offered.shape != (d, n):
            raise ValueError("taken and offered must be (devices, candidates)")
        if np.any(self.taken & ~self.offered):
            raise ValueError("a taken candidate must be offered")

    @property
    def n_devices(self) -> int:
        """Number of devices in the batch."""
        return len(self.features)

    @classmethod
    def stack(cls, lists: list[tuple[np.ndarray, np.ndarray]]) -> RankingExamples:
        """One device per ``(features (n, F), taken (n,))`` pair, padded to the longest."""
        width = max((len(t) for _, t in lists), default=0)
        features = np.zeros((len(lists), width, len(FEATURES)), np.float32)
        taken = np.zeros((len(lists), width), bool)
        offered = np.zeros((len(lists), width), bool)
        for d, (x, t) in enumerate(lists):
            features[d, : len(t)], taken[d, : len(t)], offered[d, : len(t)] = x, t, True
        return cls(features, taken, offered)

    def select(self, rows: np.ndarray) -> RankingExamples:
        """The devices ``rows``, in that order."""
        rows = np.asarray(rows, np.int64)
        return RankingExamples(self.features[rows], self.taken[rows], self.offered[rows])


def _scores(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Per-device scores ``(devices, n)``: ``params[k]`` is ``(devices, *shape_k)``."""
    w, b = params[:2]
    score = torch.einsum("dnf,df->dn", x, w) + b
    if len(params) == 5:
        w1, b1, w2 = params[2:]
        hidden = torch.relu(torch.einsum("dnf,dfh->dnh", x, w1) + b1[:, None, :])
        score = score + torch.einsum("dnh,dh->dn", hidden, w2)
    return score


def listwise_losses(
    params: list[torch.Tensor], examples: RankingExamples
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each device's mean softmax cross-entropy of its taken candidates against its
    offered list ``(devices,)``, and how many it took (a device that took none: 0)."""
    x = torch.from_numpy(examples.features)
    taken = torch.from_numpy(examples.taken)
    offered = torch.from_numpy(examples.offered)
    scores = _scores(params, x).masked_fill(~offered, -torch.inf)
    log_z = torch.logsumexp(scores, dim=1, keepdim=True)
    nll = torch.where(taken, log_z - scores, torch.zeros_like(scores)).sum(1)
    count = taken.sum(1)
    return nll / count.clamp_min(1), count


#: What a device reports of the ranker on its own offered list (``list_metrics``), each
#: in [0, 1]: hit rate and NDCG of what it took in the top 10 as the ranker orders the
#: list, and as the list arrived (rank fusion's order, which the ranker re-orders).
RANKER_METRICS = ("ranker_hr@10", "ranker_ndcg@10", "fused_hr@10", "fused_ndcg@10")


def _hr_ndcg(order: torch.Tensor, taken: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """HR@k and NDCG@k (binary relevance) per device of lists ordered by ``order``."""
    hit = torch.gather(taken, 1, order[:, :k]).double()
    discount = 1.0 / torch.log2(torch.arange(2, hit.shape[1] + 2, dtype=torch.float64))
    ideal = torch.cumsum(discount, 0)[(taken.sum(1).clamp(1, hit.shape[1]) - 1)]
    return hit.amax(1), (hit * discount).sum(1) / ideal


def list_metrics(
    weights: list[np.ndarray], examples: RankingExamples, k: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """:data:`RANKER_METRICS` (for ``k = 10``) of each device's offered list under
    ``weights``, ``(devices, 4)`` float64, and which devices took something (the others'
    rows are 0: they have nothing to measure). Ties in the ranker's score keep the
    list's order."""
    d = examples.n_devices
    if not examples.taken.shape[1]:  # every list is empty
        return np.zeros((d, len(RANKER_METRICS))), np.zeros(d, bool)
    params = [torch.from_numpy(np.asarray(w, np.float32)).expand(d, *np.shape(w)) for w in weights]
    with torch.no_grad():
        scores = _scores(params, torch.from_numpy(examples.features))
        scores = scores.masked_fill(~torch.from_numpy(examples.offered), -torch.inf)
    taken = torch.from_numpy(examples.taken)
    ranked = torch.from_numpy(np.argsort(-scores.numpy(), axis=1, kind="stable"))
    arrived = torch.arange(taken.shape[1]).expand(d, -1)
    out = torch.stack([*_hr_ndcg(ranked, taken, k), *_hr_ndcg(arrived, taken, k)], 1)
    took = taken.any(1)
    return (out * took[:, None]).numpy(), took.numpy()


def ranker_updates(
    weights: list[np.ndarray], examples: RankingExamples, settings: RankerSettings
) -> tuple[list[np.ndarray], np.ndarray]:
    """Each device's update of the global ``weights`` (one ``(devices, *shape)`` array per
    weight: its weights after ``local_steps`` gradient steps minus the global ones) and its
    loss before the steps. A device that took nothing sends only its weight decay."""
    d = examples.n_devices
    start = [torch.from_numpy(np.asarray(w, np.float32)) for w in weights]
    params = [w.expand(d, *w.shape).clone().requires_grad_(True) for w in start]
    first = None
    for _ in range(settings.local_steps):
        losses, _ = listwise_losses(params, examples)
        if first is None:
            first = losses.detach()
        decay = 0.5 * settings.weight_decay * sum(p.pow(2).sum() for p in params)
        grads = torch.autograd.grad(losses.sum() + decay, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= settings.local_lr * g
    assert first is not None
    deltas = [(p.detach() - w).numpy() for p, w in zip(params, start, strict=True)]
    return deltas, first.numpy()
