"""Test harness: run Stamen's ServerApp and ClientApp on Flower's simulation engine for a
given split and config, keeping exactly what the strategy's ``aggregate_fit`` receives, and
recompute the devices' own first-round updates to compare with it."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flwr.clientapp.typing import Mod
from flwr.common import parameters_to_ndarrays

from stamen.client.flower.app import build_client_app
from stamen.client.flower.virtual import VirtualDevices
from stamen.models.mf.local import local_update
from stamen.privacy import generate_key, generate_signing_key
from stamen.server.app import build_server_app
from stamen.server.releases import ReleaseWriter
from stamen.server.strategy import FederatedAveraging
from stamen.simulation.config import SimulationConfig, load_config
from stamen.simulation.engines.flower import provision_run
from stamen.simulation.protocol.device_evaluation import evaluate_tasks
from stamen.simulation.protocol.split import Split


def secagg_config(
    n_devices: int, *, rounds: int = 1, secagg: dict[str, Any] | None = None, **extra: Any
) -> SimulationConfig:
    """``rounds`` rounds in which every one of ``n_devices`` devices trains under SecAgg+
    (``secagg``: its settings besides ``enabled``), MF of dimension 4, no evaluation rounds;
    ``extra``: further settings."""
    return load_config(
        None,
        {
            "rounds": rounds,
            "clients_per_round": n_devices,
            "eval_every": 0,
            "local": {"dim": 4},
            "secagg": {"enabled": True, **(secagg or {})},
            **extra,
        },
    )


def own_updates(
    initial: list[np.ndarray], split: Split, config: SimulationConfig
) -> list[list[np.ndarray]]:
    """Each device's MF update in round 1 of ``config``, recomputed from ``initial`` as
    ``DeviceClient.fit`` draws it (with the local settings the server sends)."""
    settings = config.server_settings(split.n_users).local
    return [
        local_update(
            initial,
            None,
            items=split.train.row(row),
            settings=settings,
            rng=np.random.default_rng([config.seed, row, 1, 0]),
        ).delta
        for row in range(split.n_users)
    ]


class RecordingMF(FederatedAveraging):
    """``FederatedAveraging`` that keeps, per round, every result's parameters and the number of
    failures its ``aggregate_fit`` was handed."""

    received: list[tuple[list[list[np.ndarray]], int]]
    devices: Any

    def aggregate_fit(self, server_round, results, failures):  # noqa: ANN001, ANN201
        """Record the round's results and failure count, then aggregate as usual."""
        self.received.append(
            ([parameters_to_ndarrays(r.parameters) for _, r in results], len(failures))
        )
        return super().aggregate_fit(server_round, results, failures)


def run_recorded(
    split: Split,
    config: SimulationConfig,
    *,
    initial: list[np.ndarray],
    folder: Path,
    outer_mods: Sequence[Mod] = (),
    log_level: int = logging.ERROR,
    strategy: type[RecordingMF] = RecordingMF,
    publish: bool = False,
    prepare: Callable[[ReleaseWriter, VirtualDevices], None] | None = None,
    **strategy_kwargs: Any,
) -> RecordingMF:
    """Run ``config`` with one device per row of ``split`` (store written under
    ``folder``); returns the strategy (of class ``strategy``, built with
    ``strategy_kwargs``; with ``publish``, it writes signed releases under
    ``folder / "releases"``), or fails if Flower never built it. ``prepare`` is handed the
    run's release writer and provisioned devices before the run starts."""
    from flwr.simulation import run_simulation

    built: list[RecordingMF] = []
    signing_key = generate_signing_key()
    writer, provisioned = provision_run(
        config,
        split,
        catalog=None,
        output=folder,
        signing_key=signing_key,
        master_key=generate_key(),
    )
    if prepare is not None:
        prepare(writer, provisioned.devices)

    def make_strategy(context) -> FederatedAveraging:  # noqa: ANN001
        built_strategy = strategy(
            config.server_settings(split.n_users),
            initial=initial,
            population=split.n_users,
            release_key=signing_key[0],
            releases=writer if publish else None,
            **strategy_kwargs,
        )
        built_strategy.received = []
        built.append(built_strategy)
        return built_strategy

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    flwr_logger.setLevel(log_level)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            run_simulation(
                server_app=build_server_app(make_strategy),
                client_app=build_client_app(
                    provisioned.devices,
                    seed=config.seed,
                    evaluate_tasks=evaluate_tasks(provisioned.held_out),
                    secure_aggregation=config.secagg.enabled,
                    outer_mods=outer_mods,
                ),
                num_supernodes=split.n_users,
                backend_config={
                    "client_resources": {"num_cpus": 1.0, "num_gpus": 0.0},
                    "init_args": {"include_dashboard": False, "log_to_driver": False},
                },
            )
    finally:
        flwr_logger.setLevel(level)
    assert built, "the Flower simulation never built the strategy"
    built[0].devices = provisioned.devices  # the run's virtual devices, for the test to open
    return built[0]
