"""Federated training of MF on Flower's simulation engine: one virtual device per user.

The runner writes the population's device store (each device reads only its own row),
builds Stamen's ServerApp and ClientApp, and runs them with ``flwr.simulation``.
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
import torch
from flwr.app import Context
from flwr.simulation import run_simulation

from stamen.client.app import build_client_app
from stamen.client.store import write_store
from stamen.models.mf import MatrixFactorization
from stamen.privacy import generate_key, generate_signing_key
from stamen.server.app import build_server_app
from stamen.server.checkpoint import CheckpointStore
from stamen.server.strategy import FederatedMF
from stamen.simulation.config import SimulationConfig
from stamen.simulation.split import Split

__all__ = ["FederatedResult", "run_federated", "write_split_store"]


@dataclass(frozen=True)
class FederatedResult:
    """What a federated run produced."""

    history: list[dict[str, Any]]
    shared: list[np.ndarray]
    seconds: float
    resumed_from: int
    privacy: dict[str, Any] | None
    #: Flower's ERROR log lines during the run (e.g. a device's traceback), oldest first.
    errors: tuple[str, ...] = ()


class _ErrorLog(logging.Handler):
    """Keeps the Flower errors of a run, to explain a run that stops early."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def summary(self, last: int = 10) -> str:
        return " | ".join(line.strip() for line in self.lines[-last:])


def write_split_store(split: Split, folder: Path, *, key: bytes | None = None) -> Path:
    """The device store of every user in ``split`` (encrypted at rest under ``key``)."""
    return write_store(
        folder,
        train=split.train,
        valid=split.valid,
        test=split.test,
        negatives=split.negatives,
        key=key,
    )


def initial_shared(n_items: int, config: SimulationConfig) -> list[np.ndarray]:
    """The seeded initial item side."""
    model = MatrixFactorization(
        1,
        n_items,
        config.local.dim,
        init_std=config.local.init_std,
        generator=torch.Generator().manual_seed(config.seed),
    )
    return model.shared_arrays()


def run_federated(
    config: SimulationConfig,
    split: Split,
    *,
    output: Path,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    verbose: bool = False,
) -> FederatedResult:
    """Run ``config.rounds`` rounds (fewer when resuming) with ``split.n_users`` devices."""
    # Devices keep their data encrypted at rest under a key that lives only in this run.
    store_key = generate_key()
    store = write_split_store(split, output / "devices", key=store_key)
    checkpoints = CheckpointStore(output / "checkpoints")
    resume = checkpoints.latest() if config.resume else None
    if not config.resume:
        checkpoints.clear()
    fingerprint = {
        "dataset": config.dataset,
        "n_items": split.n_items,
        "dim": config.local.dim,
        "optimizer": config.optimizer.name,
        "seed": config.seed,
    }
    built: list[FederatedMF] = []
    release_private, release_public = generate_signing_key()

    def make_strategy(context: Context) -> FederatedMF:
        strategy = FederatedMF(
            config.server_settings(split.n_users),
            initial=initial_shared(split.n_items, config),
            checkpoints=checkpoints,
            resume=resume,
            fingerprint=fingerprint,
            on_round=on_round,
            population=split.n_users,
            release_key=release_private,
        )
        built.append(strategy)
        return strategy

    server_app = build_server_app(make_strategy)
    client_app = build_client_app(
        store,
        seed=config.seed,
        secure_aggregation=config.secagg.enabled,
        release_key=release_public,
        store_key=store_key,
    )
    backend_config = {
        "client_resources": {"num_cpus": config.cpus_per_client, "num_gpus": 0.0},
        "init_args": {"include_dashboard": False, "log_to_driver": verbose},
    }
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
    done = strategy.history[-1]["round"] if strategy.history else 0
    if done < config.rounds:
        raise RuntimeError(
            f"the Flower simulation stopped after round {done} of {config.rounds}; "
            f"Flower's errors: {errors.summary() or 'none logged'}"
        )
    return FederatedResult(
        history=strategy.history,
        shared=strategy.server.arrays(),
        seconds=seconds,
        resumed_from=strategy.start_round,
        privacy=strategy.privacy_report(),
        errors=tuple(errors.lines),
    )
