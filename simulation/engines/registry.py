"""The engines of a run's federated stage (``SimulationConfig.engine``), by name.

- ``flower``: Flower's simulation engine (``stamen.simulation.engines.flower``), one
  virtual device per user with its encrypted store, signed releases, checkpoints and
  SecAgg+'s masks; the default, and the demo's engine.
- ``batched``: the same rounds in this process (``stamen.simulation.engines.batched``):
  the same ``RoundPlan`` (cohorts, Poisson sampling, the Gaussian-sum mechanism and its
  accountant), the same device step for a chunk of the cohort at a time, SecAgg+'s clipping
  and quantisation, the same server optimiser; every device's held-out evaluation scored
  at once, as each device scores itself. No transport, device stores, releases or
  checkpoints, so for research-size populations (``SimulationConfig.batched_problems``:
  what it does not run).

Both return a :class:`~stamen.simulation.engines.flower.FederatedResult` whose history
holds :class:`~stamen.server.rounds.RoundRecord` s, so ``run_experiment`` reports either
the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from stamen.models.batches import UserItems
from stamen.models.metrics import target_nll
from stamen.models.registry import DeviceInputs, RecModel, device_seeds
from stamen.models.schema import Catalog
from stamen.server.analytics import DEFAULT_CUTOFFS, evaluation_metrics
from stamen.server.rounds import Evaluation, RoundRecord
from stamen.server.settings import ServerSettings
from stamen.simulation.config import SimulationConfig
from stamen.simulation.engines.als_stage import run_private_als
from stamen.simulation.engines.batched import run_batched
from stamen.simulation.engines.flower import (
    FederatedResult,
    initial_shared,
    release_catalog,
    run_federated,
)
from stamen.simulation.protocol.device_evaluation import VALID_METRICS
from stamen.simulation.protocol.evaluate import evaluate
from stamen.simulation.protocol.split import Split

__all__ = [
    "ENGINES",
    "Engine",
    "FederatedStage",
    "THREADS",
    "population_evaluation",
    "run_batched_stage",
]


#: BLAS and torch threads of a batched stage: its operations are small (a cohort's
#: ``dim x dim`` systems, a chunk's dense updates), and on a shared machine threads that
#: spin waiting for a core cost more than they give (the ML-100K demo's stage ran about
#: three times faster on one thread than on two, on 2 loaded cores).
THREADS = 1


class FederatedStage(Protocol):
    """Runs a config's federated stage over ``split``'s users (one device each), calling
    ``on_round`` with each finished round's record."""

    def __call__(
        self,
        config: SimulationConfig,
        split: Split,
        *,
        output: Path,
        catalog: Catalog | None = None,
        on_round: Callable[[RoundRecord], None] | None = None,
        verbose: bool = False,
    ) -> FederatedResult:
        """Run the stage; ``output`` is the run's folder, ``catalog`` the data set's."""
        ...


@dataclass(frozen=True)
class Engine:
    """A federated stage's engine and how a run's report says what it computed."""

    run: FederatedStage
    #: What computed the SecAgg+ sum (``str.format``-ed with the ``[secagg]`` settings).
    secure_aggregation: str
    #: What computed a secure evaluation's metrics.
    secure_evaluation: str
    #: What computed private ALS's SecAgg+ sums, where it differs (``None``: as above).
    als_aggregation: str | None = None


def population_evaluation(
    model: RecModel,
    split: Split,
    settings: ServerSettings,
    states: dict[int, np.ndarray | None] | None = None,
    *,
    cutoffs: tuple[int, ...] = DEFAULT_CUTOFFS,
) -> Callable[[list[np.ndarray]], Evaluation]:
    """The federated evaluation of shared arrays over every evaluated device at once, as
    each device evaluates itself (``held_out_evaluation``: its scores from its training
    history, no request context; the test items ranked with training and validation items
    excluded, the validation items with training items excluded; the fixed negatives) and
    as the strategy records it: the mean of each metric, under a secure evaluation only
    ``analytics.evaluation.metrics`` (a plain one adds the mean loss, each device's mean
    over its test items of their negative log-softmax over the catalogue). ``states``: each
    device's private state by device id as training left it (``None``: none), which its
    evaluation reads; @k metrics at the protocol's ``cutoffs``."""
    reported = evaluation_metrics(cutoffs)
    secure = settings.secure_evaluation
    kept = set(settings.analytics.evaluation.metrics)

    def evaluation(shared: list[np.ndarray]) -> Evaluation:
        losses: list[float] = []

        def scorer(users: np.ndarray, *, test: bool) -> torch.Tensor:
            users = np.asarray(users, np.int64)
            history: UserItems = split.train.select(users)
            # purpose 1 as on the device (PFedRec's scoring step draws from it)
            seeds = device_seeds(users, seed=settings.seed, rnd=0, purpose=1)
            own = None if states is None else tuple(states.get(int(u)) for u in users)
            inputs = DeviceInputs(history=history, seeds=seeds, states=own)
            scores = model.scores(shared, inputs).float()
            if test:
                losses.append(float(target_nll(scores, split.test[users]).sum()))
            return scores

        test = evaluate(lambda u: scorer(u, test=True), split, stage="test", ks=cutoffs)
        valid = evaluate(lambda u: scorer(u, test=False), split, stage="valid", ks=(10,))
        # what a device's evaluation reports (held_out_evaluation)
        metrics = {k: v for k, v in test.items() if k in reported}
        metrics |= {f"valid_{k}": v for k, v in valid.items() if k in VALID_METRICS}
        devices = len(split.evaluated)
        if secure:
            metrics = {k: v for k, v in metrics.items() if k in kept}
        else:
            metrics["loss"] = sum(losses) / max(devices, 1)
        return Evaluation(metrics=dict(sorted(metrics.items())), devices=devices, full=True)

    return evaluation


def run_batched_stage(
    config: SimulationConfig,
    split: Split,
    *,
    output: Path,
    catalog: Catalog | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
    verbose: bool = False,
) -> FederatedResult:
    """``config``'s federated stage on the batched engine (module docstring): the model
    over the releases' catalogue (``release_catalog``), the run's seeded initial arrays,
    ``run_batched``'s rounds and :func:`population_evaluation`. It writes nothing under
    ``output`` (no releases, device stores or checkpoints); ``verbose`` has no logs to
    show. BLAS and torch run one thread (:data:`THREADS`) meanwhile. Private ALS runs
    its own rounds (``stamen.simulation.engines.als_stage``)."""
    started = time.perf_counter()
    settings = config.server_settings(split.n_users)
    model = config.run_model(release_catalog(split, catalog), split.n_users)
    states: dict[int, np.ndarray | None] = {}  # the devices' private states, by device id
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        with threadpool_limits(limits=THREADS):
            if config.algorithm == "als":
                result = run_private_als(
                    split,
                    settings,
                    config.als,
                    evaluation=population_evaluation(
                        model, split, settings, cutoffs=config.protocol.cutoffs
                    ),
                    on_round=on_round,
                )
            else:
                result = run_batched(
                    split,
                    settings,
                    initial=initial_shared(split.n_items, config, model.catalog),
                    model=model,
                    on_round=on_round,
                    evaluation=population_evaluation(
                        model, split, settings, states, cutoffs=config.protocol.cutoffs
                    ),
                    states=states,
                )
    finally:
        torch.set_num_threads(threads)
    return FederatedResult(
        history=result.history,
        shared=result.shared,
        seconds=time.perf_counter() - started,
        resumed_from=0,
        privacy=result.privacy,
    )


#: The engines by name (``SimulationConfig.engine``).
ENGINES: dict[str, Engine] = {
    "flower": Engine(
        run=run_federated,
        secure_aggregation="Flower SecAgg+ ({num_shares} shares, threshold "
        "{reconstruction_threshold})",
        secure_evaluation="a SecAgg+ sum (no device's metrics in the clear)",
    ),
    "batched": Engine(
        run=run_batched_stage,
        secure_aggregation="SecAgg+'s arithmetic replayed by the batched engine (each "
        "coordinate clipped to ±{clipping_range} and quantised to {quantization_range} "
        "levels as Flower's quantize does; no masks or key exchange)",
        secure_evaluation="the exact mean over every evaluated device, computed by the "
        "batched engine (what the SecAgg+ sum reveals, up to its quantisation)",
        als_aggregation="the exact sum of private ALS's statistics, computed by the batched "
        "engine (SecAgg+'s quantisation, under one level a device and coordinate, not "
        "replayed; under distributed DP the noise drawn on the sum, distributed as the "
        "devices' shares sum; no masks or key exchange)",
    ),
}
