"""Private ALS (``algorithm = "als"``) on the batched engine.

The rounds are ``private_als_rounds`` (``stamen.simulation.baselines.private_als``), the
simulation that ``tests/integration/test_als_rounds.py`` checks against Flower's
``FederatedALS``: the DP item counts, then ``als.rounds`` rounds in which every device
solves its user factor and its clipped ALS statistics are summed, noised and solved for
the item side. Around them, what the Flower run does: the run's ``RoundPlan`` (the same
Gaussian-sum mechanism, hence the same noise multiplier and accountant, charged once per
release), its evaluation schedule with every evaluated device scored as it scores itself
(``population_evaluation``), and round records numbered and filled as ``FederatedALS``
fills them.

The noise is drawn on the sum. Under ``dp.mode = "distributed"`` each of the ``n``
devices adds a share of standard deviation ``σ / sqrt(n)``: their sum is ``N(0, σ²)``
per coordinate, the distribution drawn here. SecAgg+'s quantisation of the statistics is
not replayed: Flower's stochastic rounding moves a device's coordinate by less than one
level, ``2 × clipping range / quantization_range`` (about 1.8e-6 for ML-100K's private ALS
at ε = 4, distributed), unbiased, so the sum of 943 devices is off by a standard deviation
below 3e-5 where the noise's is 1.8 or more. Nor are SecAgg+'s masks, the device stores,
releases or checkpoints.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from stamen.server.als import ALSSettings
from stamen.server.rounds import Evaluation, PrivacySpent, RoundPlan, RoundRecord
from stamen.server.settings import ServerSettings
from stamen.simulation.baselines.private_als import private_als_rounds
from stamen.simulation.engines.batched import BatchedResult
from stamen.simulation.protocol.split import Split

__all__ = ["run_private_als"]


def run_private_als(
    split: Split,
    settings: ServerSettings,
    als: ALSSettings,
    *,
    evaluation: Callable[[list[np.ndarray]], Evaluation],
    on_round: Callable[[RoundRecord], None] | None = None,
) -> BatchedResult:
    """Private ALS's rounds over ``split``'s users, one device each (module docstring),
    under the run's ``settings`` (``als_server_settings``'); ``evaluation`` scores the item
    side ``[items, bias]`` on the plan's schedule. The batched engine's stage
    (``stamen.simulation.engines.registry.run_batched_stage``) calls it for algorithm
    ``"als"``."""
    started = time.perf_counter()
    # every device in every round; the SecAgg+ range is als_server_settings' (own_range)
    plan = RoundPlan(settings, population=split.n_users, own_range=True)
    mechanism = plan.mechanism

    def finish(record: RoundRecord, shared: list[np.ndarray]) -> None:
        if mechanism is not None:
            mechanism.accountant.step()
            record.privacy = PrivacySpent.of(mechanism)
        if plan.evaluates(record.round):
            tick = time.perf_counter()
            record.evaluate = evaluation(shared)
            record.seconds = (record.seconds or 0.0) + time.perf_counter() - tick
        if on_round is not None:
            on_round(record)

    rounds = private_als_rounds(
        split.train,
        als,
        noise_multiplier=0.0 if mechanism is None else mechanism.noise_multiplier,
        seed=settings.seed,
        on_round=finish,
    )
    return BatchedResult(
        history=rounds.history,
        shared=[rounds.items, rounds.bias],
        seconds=time.perf_counter() - started,
        privacy=None if mechanism is None else mechanism.report(),
    )
