"""Federated training of MF on Flower's simulation engine: one virtual device per user.

The runner publishes release 0 (the initial model), provisions one real device per user
through the device library (``stamen.simulation.engines.devices``), builds Stamen's ServerApp
(which publishes a signed release after every round into ``output/releases``) and
ClientApp, and runs them with ``flwr.simulation``; with ``[ranker] rounds`` the same
ServerApp then trains the pipeline's ranker (``build_ranker_strategy``). The publisher's
signing key is kept in the owner-only file ``output/keys/release.key`` so that a resumed
run signs with the same key the devices and apps pinned.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecordValues, Context
from flwr.simulation import run_simulation

from stamen.client.flower.app import build_client_app
from stamen.client.flower.virtual import VirtualDevices
from stamen.errors import ConfigError
from stamen.models.bundle import ReleaseBundle, ReleaseCatalog, latest_release
from stamen.models.registry import RecModel
from stamen.models.schema import Catalog
from stamen.privacy import generate_key, open_signed
from stamen.server.als_strategy import FederatedALS
from stamen.server.app import build_server_app
from stamen.server.checkpoint import CheckpointStore
from stamen.server.ranker_strategy import RankerAveraging
from stamen.server.releases import ReleaseWriter, load_or_create_signing_key
from stamen.server.rounds import RoundRecord
from stamen.server.settings import ServerSettings
from stamen.server.strategy import FederatedAveraging
from stamen.simulation.config import SimulationConfig
from stamen.simulation.engines.devices import Provisioned, provision_devices
from stamen.simulation.protocol.device_evaluation import evaluate_tasks
from stamen.simulation.protocol.split import Split

__all__ = [
    "FederatedResult",
    "build_ranker_strategy",
    "build_strategy",
    "initial_shared",
    "provision_run",
    "release_catalog",
    "release_catalog_of",
    "run_federated",
]


@dataclass(frozen=True)
class FederatedResult:
    """What a federated run produced."""

    history: list[RoundRecord]
    shared: list[np.ndarray]
    seconds: float
    resumed_from: int
    privacy: dict[str, Any] | None
    #: Flower's ERROR log lines during the run (e.g. a device's traceback), oldest first.
    errors: tuple[str, ...] = ()
    #: The ranker's rounds after training (``[ranker] rounds``): ``history`` and
    #: ``privacy`` as above, its ``weights``; ``None`` when it did not train.
    ranker: dict[str, Any] | None = None


class _ErrorLog(logging.Handler):
    """Keeps the Flower errors of a run, to explain a run that stops early."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def summary(self, last: int = 10) -> str:
        return " | ".join(line.strip() for line in self.lines[-last:])


def release_catalog(split: Split, catalog: Catalog | None) -> ReleaseCatalog:
    """The releases' catalogue: the data set's, or (``None``) ids ``0…n-1`` titled
    ``Item <i>`` for tables without one."""
    if catalog is not None:
        return ReleaseCatalog.from_catalog(catalog)
    return release_catalog_of(split.n_items)


def release_catalog_of(n_items: int) -> ReleaseCatalog:
    """A catalogue of ids ``0…n-1`` titled ``Item <i>`` (no content)."""
    ids = [str(i) for i in range(n_items)]
    return ReleaseCatalog.build(ids, titles=[f"Item {i}" for i in ids])


def provision_run(
    config: SimulationConfig,
    split: Split,
    *,
    catalog: Catalog | None,
    output: Path,
    signing_key: tuple[bytes, bytes],
    master_key: bytes,
    resume_from: int | None = None,
    progress: bool = False,
) -> tuple[ReleaseWriter, Provisioned]:
    """The run's release writer (``output/releases``) and its devices: release 0 (or,
    when resuming, the newest release) installed on one device per user of ``split``."""
    private, public = signing_key
    writer = ReleaseWriter(
        output / "releases",
        private_key=private,
        public_key=public,
        model=config.run_model(release_catalog(split, catalog), split.n_users),
    )
    release = latest_release(writer.folder) if resume_from else None
    if not resume_from:  # a fresh run: the releases of an earlier run in this folder go
        for old in writer.folder.glob("release-*.stamen"):
            old.unlink()
    if release is None or not release.is_file():
        release = writer.publish(0, initial_shared(split.n_items, config, writer.catalog))
    provisioned = provision_devices(
        split,
        writer.catalog,
        output,
        master_key=master_key,
        release_key=public,
        release=release,
        progress=progress,
    )
    return writer, provisioned


def initial_shared(
    n_items: int, config: SimulationConfig, catalog: ReleaseCatalog | None = None
) -> list[np.ndarray]:
    """The run's seeded initial shared arrays over ``catalog`` (``None``: a catalogue of
    ``n_items`` bare ids, enough for MF); private ALS: its public random start."""
    if config.algorithm == "als":
        return FederatedALS.initial(n_items, config.als, seed=config.seed)
    catalog = catalog or release_catalog_of(n_items)
    return config.run_model(catalog, 1).init_shared(config.seed)


def _trending_clock(settings: ServerSettings, split: Split) -> ServerSettings:
    """A simulation replays old events: trending's window ends at the split's last
    training event unless the settings fix its end."""
    trending = settings.analytics.trending
    if not trending.every or trending.now is not None:
        return settings
    if split.train_times is None:
        raise ConfigError("trending needs event times; this data set has no timestamps")
    trending = trending.model_copy(update={"now": float(split.train_times.max())})
    analytics = settings.analytics.model_copy(update={"trending": trending})
    return settings.model_copy(update={"analytics": analytics})


def build_strategy(
    config: SimulationConfig, split: Split, model: RecModel, **kwargs: Any
) -> FederatedAveraging:
    """The run's server strategy: ``FederatedAveraging`` (FedAvg / FedAdam, DP-FedAvg) or
    ``FederatedALS`` (private ALS), over ``split``'s devices; ``kwargs`` go to it."""
    settings = _trending_clock(config.server_settings(split.n_users), split)
    initial = initial_shared(split.n_items, config, model.catalog)
    if config.algorithm == "als":
        return FederatedALS(
            settings, config.als, initial=initial, population=split.n_users, **kwargs
        )
    return FederatedAveraging(settings, initial=initial, population=split.n_users, **kwargs)


def build_ranker_strategy(
    config: SimulationConfig,
    split: Split,
    devices: VirtualDevices,
    releases: ReleaseWriter,
    **kwargs: Any,
) -> RankerAveraging:
    """The ranker's strategy after the training run (``config.ranker``): every device
    installs the newest release in ``releases`` (as an app's update check would), whose
    retrieval model and trending counts every ranker release keeps; ``kwargs`` go to it."""
    newest = latest_release(releases.folder)
    if newest is None:
        raise RuntimeError(f"{releases.folder}: no release for the ranker to start from")
    for row in range(split.n_users):
        with devices.open(row) as device:
            device.apply_release(newest, link=True)
    bundle = ReleaseBundle.decode(
        open_signed(newest.read_bytes(), public_key=releases.public_key, source=str(newest)),
        source=str(newest),
    )
    return RankerAveraging(
        config.ranker_server_settings(split.n_users),
        ranker=config.ranker.device_settings(),
        retrieval=bundle.shared_arrays(),
        release_offset=bundle.release,
        trending=bundle.trending,
        population=split.n_users,
        releases=releases,
        **kwargs,
    )


def run_federated(
    config: SimulationConfig,
    split: Split,
    *,
    output: Path,
    catalog: Catalog | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
    verbose: bool = False,
) -> FederatedResult:
    """Run ``config.rounds`` rounds (fewer when resuming) with ``split.n_users`` devices;
    releases carry ``catalog`` (see :func:`release_catalog`)."""
    checkpoints = CheckpointStore(output / "checkpoints")
    resume = checkpoints.latest() if config.resume else None
    if not config.resume:
        checkpoints.clear()
    fingerprint = {
        "dataset": config.dataset,
        "n_items": split.n_items,
        "model": config.model,
        "dim": config.local.dim if config.algorithm == "fedavg" else config.als.dim,
        "optimizer": config.optimizer.name,
        "algorithm": config.algorithm,
        "seed": config.seed,
    }
    built: list[FederatedAveraging] = []
    signing_key = load_or_create_signing_key(output / "keys" / "release.key")
    # Devices keep their data encrypted at rest under keys derived from one that lives
    # only in this run's memory.
    releases, provisioned = provision_run(
        config,
        split,
        catalog=catalog,
        output=output,
        signing_key=signing_key,
        master_key=generate_key(),
        resume_from=resume.round if resume is not None else None,
        progress=verbose,
    )

    def make_strategy(context: Context) -> FederatedAveraging:
        strategy = build_strategy(
            config,
            split,
            config.run_model(releases.catalog, split.n_users),
            checkpoints=checkpoints,
            resume=resume,
            fingerprint=fingerprint,
            on_round=on_round,
            release_key=signing_key[0],
            releases=releases,
        )
        built.append(strategy)
        return strategy

    ranker: list[RankerAveraging] = []

    def make_ranker(context: Context, trained: FederatedAveraging) -> RankerAveraging | None:
        if not config.ranker.rounds:
            return None
        ranker.append(
            build_ranker_strategy(
                config, split, provisioned.devices, releases, release_key=signing_key[0]
            )
        )
        return ranker[0]

    server_app = build_server_app(make_strategy, then=make_ranker)
    client_app = build_client_app(
        provisioned.devices,
        seed=config.seed,
        secure_aggregation=config.secagg.enabled,
        evaluate_tasks=evaluate_tasks(provisioned.held_out, cutoffs=config.protocol.cutoffs),
    )
    backend_config: dict[str, dict[str, ConfigRecordValues]] = {
        "client_resources": {"num_cpus": config.cpus_per_client, "num_gpus": 0.0},
        "init_args": {"include_dashboard": False, "log_to_driver": verbose},
    }
    if config.ray_address is not None:  # join a running cluster instead of starting Ray
        backend_config["init_args"] = {"address": config.ray_address, "log_to_driver": verbose}
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.ERROR)
    errors = _ErrorLog()
    flwr_logger.addHandler(errors)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=split.n_users,
                backend_config=backend_config,
                verbose_logging=verbose,
            )
    finally:
        flwr_logger.setLevel(level)
        flwr_logger.removeHandler(errors)
    seconds = time.perf_counter() - started
    if not built:
        raise RuntimeError("the Flower simulation ended before the server strategy was built")
    strategy = built[0]
    done = strategy.history[-1].round if strategy.history else 0
    planned = strategy.settings.rounds
    if done < planned:
        raise RuntimeError(
            f"the Flower simulation stopped after round {done} of {planned}; "
            f"Flower's errors: {errors.summary() or 'none logged'}"
        )
    ranked = None
    if config.ranker.rounds:
        done = ranker[0].history[-1].round if ranker and ranker[0].history else 0
        if done < config.ranker.rounds:
            raise RuntimeError(
                f"the ranker's rounds stopped after round {done} of {config.ranker.rounds}; "
                f"Flower's errors: {errors.summary() or 'none logged'}"
            )
        ranked = {
            "history": ranker[0].history,
            "privacy": ranker[0].privacy_report(),
            "weights": ranker[0].server.arrays(),
        }
    return FederatedResult(
        history=strategy.history,
        shared=strategy.server.arrays(),
        seconds=seconds,
        resumed_from=strategy.start_round,
        privacy=strategy.privacy_report(),
        errors=tuple(errors.lines),
        ranker=ranked,
    )
