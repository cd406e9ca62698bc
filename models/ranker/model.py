"""The ranker's federated training (torch): its examples, loss, update and metrics.

The ranker itself (its :data:`~stamen.models.ranker.weights.FEATURES`, weights and the
numpy scoring a device serves with) is ``stamen.models.ranker.weights``. Its weights are
global, trained federatedly like the retrieval model's shared arrays (same cohorts,
clipping, noise, SecAgg+ quantisation and accountant: ``stamen.simulation.engines.ranker``)
and shipped in the release bundle. A device's training example is one list it was offered:
the candidates and which of them it took; the loss is the softmax cross-entropy of each
taken candidate against the whole offered list (listwise, the way the ranker is used).
:func:`ranker_updates` is batch-first: any number of devices, each starting from the global
weights and taking ``local_steps`` full-batch gradient steps on its own list, so one device
and a cohort chunk run the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stamen.models.ranker.settings import RankerSettings
from stamen.models.ranker.weights import FEATURES

__all__ = [
    "RANKER_METRICS",
    "RankingExamples",
    "list_metrics",
    "listwise_losses",
    "ranker_updates",
]


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
