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
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from stamen.models.schema import Catalog
from stamen.server.rounds import PrivacySpent, RoundPlan, RoundRecord
from stamen.simulation.baselines.private_als import private_als_rounds
from stamen.simulation.config import SimulationConfig
from stamen.simulation.engines.flower import FederatedResult, release_catalog
from stamen.simulation.protocol.split import Split

__all__ = ["run_private_als_stage"]


def run_private_als_stage(
    config: SimulationConfig,
    split: Split,
    *,
    output: Path,
    catalog: Catalog | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
    verbose: bool = False,
) -> FederatedResult:
    """``config``'s private ALS stage on the batched engine (module docstring), over
    ``split``'s users, one device each; a ``FederatedStage``. The item side is returned
    as the shared arrays ``[items, bias]``, scored by the run's MF model over the
    releases' catalogue (``release_catalog``). It writes nothing under ``output``;
    ``verbose`` has no logs to show. BLAS and torch run the registry's ``THREADS``."""
    # the registry dispatches its batched stage here: imported when it has loaded
    from stamen.simulation.engines.registry import THREADS, population_evaluation

    started = time.perf_counter()
    settings = config.server_settings(split.n_users)
    # every device in every round; the SecAgg+ range is als_server_settings' (own_range)
    plan = RoundPlan(settings, population=split.n_users, own_range=True)
    mechanism = plan.mechanism
    model = config.run_model(release_catalog(split, catalog), split.n_users)
    evaluation = population_evaluation(model, split, settings, cutoffs=config.protocol.cutoffs)

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

    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        with threadpool_limits(limits=THREADS):
            rounds = private_als_rounds(
                split.train,
                config.als,
                noise_multiplier=0.0 if mechanism is None else mechanism.noise_multiplier,
                seed=settings.seed,
                on_round=finish,
            )
    finally:
        torch.set_num_threads(threads)
    return FederatedResult(
        history=rounds.history,
        shared=[rounds.items, rounds.bias],
        seconds=time.perf_counter() - started,
        resumed_from=0,
        privacy=None if mechanism is None else mechanism.report(),
    )
