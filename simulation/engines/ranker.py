"""Federated training of the ranker in the batched simulation.

Every device builds its training example on itself (``Device.ranking_example``: the list
its generators would have offered before its latest items, and which of those it took);
the ranker's weights are then trained by the same federated averaging as the retrieval
model (``stamen.simulation.engines.batched.run_rounds``: seeded cohorts, Poisson under DP, each
device's update clipped, its noise share added, SecAgg+ quantisation, Opacus
accounting, the server's optimiser), with the ranker's batch-first device step
(``stamen.models.ranker.model.ranker_updates``). Only the clipped, aggregated updates leave the
devices; the examples stay where they were built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from stamen.models.ranker.model import RankingExamples, listwise_losses, ranker_updates
from stamen.models.ranker.settings import RankerSettings
from stamen.models.ranker.weights import FEATURES, init_ranker
from stamen.server.rounds import RoundRecord
from stamen.server.settings import ServerSettings
from stamen.simulation.engines.batched import BatchedResult, run_rounds

__all__ = ["RankerRun", "gather_examples", "mean_loss", "train_ranker"]


@dataclass(frozen=True)
class RankerRun:
    """A trained ranker: its weights, the training history and privacy report
    (``BatchedResult``), and the mean listwise loss on the devices' examples before
    and after training."""

    weights: list[np.ndarray]
    result: BatchedResult
    loss_before: float
    loss_after: float


def gather_examples(
    examples: Iterable[tuple[np.ndarray, np.ndarray] | None],
) -> tuple[RankingExamples, np.ndarray]:
    """Stack the devices' examples in device order; a device without one (``None``)
    holds an empty list and sends only weight decay. Also returns which devices had one."""
    pairs, has = [], []
    for example in examples:
        has.append(example is not None)
        pairs.append(example or (np.zeros((0, len(FEATURES)), np.float32), np.zeros(0, bool)))
    return RankingExamples.stack(pairs), np.array(has, bool)


def mean_loss(weights: list[np.ndarray], examples: RankingExamples) -> float:
    """The mean listwise loss over the devices that took something."""
    params = [torch.from_numpy(w)[None].expand(examples.n_devices, *w.shape) for w in weights]
    with torch.no_grad():
        losses, count = listwise_losses(params, examples)
    return float(losses[count > 0].mean()) if bool((count > 0).any()) else float("nan")


def train_ranker(
    examples: RankingExamples,
    settings: ServerSettings,
    ranker: RankerSettings,
    *,
    on_round: Callable[[RoundRecord], None] | None = None,
) -> RankerRun:
    """Train the ranker federatedly over the devices whose examples are ``examples``
    (row ``d``: device ``d``) under ``settings`` (rounds, cohort, optimiser, SecAgg+,
    user-level DP; its model fields are not used)."""
    initial = init_ranker(ranker, settings.seed)

    def step(shared: list[np.ndarray], devices: np.ndarray, rnd: int) -> list[torch.Tensor]:
        deltas, _ = ranker_updates(shared, examples.select(devices), ranker)
        return [torch.from_numpy(d) for d in deltas]

    result = run_rounds(examples.n_devices, settings, initial=initial, step=step, on_round=on_round)
    return RankerRun(
        weights=result.shared,
        result=result,
        loss_before=mean_loss(initial, examples),
        loss_after=mean_loss(result.shared, examples),
    )
