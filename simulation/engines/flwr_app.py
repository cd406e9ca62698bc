"""The Flower App behind ``flwr run .`` (simulation runtime).

``pyproject.toml`` names ``server_app`` and ``client_app`` here. The run config
(``[tool.flwr.app.config]``, overridable with ``flwr run . --run-config "k=v ..."``) holds
flat kebab-case keys: ``dataset``, ``data-dir``, ``num-server-rounds``,
``clients-per-round``, ``eval-every``, ``seed``, ``output``, ``synthetic-users``,
``synthetic-items``; SecAgg+: ``secure-aggregation``, ``secagg-num-shares``,
``secagg-reconstruction-threshold``, ``secagg-clipping-range``; user-level DP: ``dp``
(``off``, ``central`` or ``distributed``), ``dp-epsilon`` (target ε), ``dp-delta``,
``dp-noise-multiplier``, ``dp-clip-norm``; the pipeline's ranker after training:
``ranker-rounds``, ``ranker-clients-per-round``, ``ranker-hidden``, ``ranker-local-lr``.
An empty value keeps the default.
The federation must have one SuperNode per user (``num-supernodes`` = the data set's
user count, e.g. 943 for ml-100k). Before the first round the ServerApp provisions the
virtual devices, as ``stamen simulate`` does: one device per user under
``output/devices`` (each its own SQLCipher store under a key derived from a fresh master
key), release 0 installed from ``output/releases``, and ``output/device-keys``
(``stamen.client.DeviceKeys``: the master key and the public half of a fresh Ed25519 key
pair). Devices accept only releases and global models signed with the private half, which
stays in the ServerApp's memory; a signed release is published after every round.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.client import Client, ClientApp
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Message
from flwr.server import Grid, ServerApp

from stamen.client.device.keys import DeviceKeys
from stamen.client.flower.app import make_client_fn
from stamen.client.flower.virtual import VirtualDevices
from stamen.models import ConfigError
from stamen.privacy import generate_key, generate_signing_key
from stamen.server.app import run_rounds
from stamen.server.checkpoint import CheckpointStore
from stamen.simulation.config import SimulationConfig, load_config
from stamen.simulation.engines.devices import Provisioned
from stamen.simulation.engines.flower import build_ranker_strategy, build_strategy, provision_run
from stamen.simulation.experiment import load_for_config, privacy_section
from stamen.simulation.protocol.report import write_results
from stamen.simulation.protocol.split import leave_one_out

__all__ = ["client_app", "config_from_run_config", "server_app"]

_log = logging.getLogger("stamen")

_KEYS = {
    "dataset": "dataset",
    "data-dir": "data_dir",
    "num-server-rounds": "rounds",
    "algorithm": "algorithm",
    "model": "model",
    "clients-per-round": "clients_per_round",
    "eval-every": "eval_every",
    "seed": "seed",
    "output": "output",
    "synthetic-users": "synthetic_users",
    "synthetic-items": "synthetic_items",
}


_SECTIONS = {
    "secagg": {
        "secure-aggregation": "enabled",
        "secagg-num-shares": "num_shares",
        "secagg-reconstruction-threshold": "reconstruction_threshold",
        "secagg-clipping-range": "clipping_range",
    },
    "dp": {
        "dp": "mode",
        "dp-epsilon": "target_epsilon",
        "dp-delta": "delta",
        "dp-noise-multiplier": "noise_multiplier",
        "dp-clip-norm": "clip_norm",
    },
    "ranker": {
        "ranker-rounds": "rounds",
        "ranker-clients-per-round": "clients_per_round",
        "ranker-hidden": "hidden",
        "ranker-local-lr": "local_lr",
    },
}


def _given(run_config: dict, keys: dict[str, str]) -> dict:
    """Stamen's names for the ``keys`` set in ``run_config`` (empty strings: unset)."""
    return {
        ours: run_config[theirs]
        for theirs, ours in keys.items()
        if run_config.get(theirs, "") != ""
    }


def config_from_run_config(run_config: dict) -> SimulationConfig:
    """Map Flower's flat run config onto Stamen's settings (empty values: defaults)."""
    known = set(_KEYS).union(*_SECTIONS.values())
    unknown = sorted(set(run_config) - known)
    if unknown:
        raise ConfigError(f"flwr run config: unknown keys {unknown}; known: {sorted(known)}")
    run_config = {k: v for k, v in run_config.items() if v is not None}
    overrides = _given(run_config, _KEYS)
    for section, keys in _SECTIONS.items():
        if values := _given(run_config, keys):
            overrides[section] = values
    return load_config(None, overrides, source="flwr run config")


def _keys(config: SimulationConfig) -> Path:
    return config.output / "device-keys"


server_app = ServerApp()


@server_app.main()
def _server(grid: Grid, context: Context) -> None:
    config = config_from_run_config(dict(context.run_config))
    dataset, source = load_for_config(config, say=_log.warning)
    split = leave_one_out(dataset.interactions, seed=config.seed)
    release_private, release_public = generate_signing_key()
    keys = DeviceKeys(store_key=generate_key(), release_key=release_public)
    keys.save(_keys(config))
    releases, _ = provision_run(
        config,
        split,
        catalog=dataset.catalog,
        output=config.output,
        signing_key=(release_private, release_public),
        master_key=keys.store_key,
    )
    strategy = build_strategy(
        config,
        split,
        config.run_model(releases.catalog, split.n_users),
        checkpoints=CheckpointStore(config.output / "checkpoints"),
        fingerprint={
            "dataset": config.dataset,
            "n_items": split.n_items,
            "model": config.model,
            "algorithm": config.algorithm,
        },
        release_key=release_private,
        releases=releases,
    )
    run_rounds(grid, context, strategy)
    results = {
        "config": config.model_dump(mode="json"),
        "dataset": {"name": dataset.name, "source": source},
        "federated": {"rounds": strategy.history},
        "privacy": privacy_section(strategy.privacy_report(), config),
    }
    if config.ranker.rounds:  # then the pipeline's ranker, on the same devices
        ranker = build_ranker_strategy(
            config, split, _devices(config, keys), releases, release_key=release_private
        )
        run_rounds(grid, context, ranker)
        results["ranker"] = {"rounds": ranker.history, "privacy": ranker.privacy_report()}
    write_results(config.output / "results.json", results)


def _device_policy_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Applies SecAgg+ when the run asks for it; a device that requires secure
    aggregation then refuses a plain training request instead of sending in the clear."""
    if config_from_run_config(dict(context.run_config)).secagg.enabled:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def _devices(config: SimulationConfig, keys: DeviceKeys) -> VirtualDevices:
    return VirtualDevices(
        config.output / "devices", master_key=keys.store_key, release_key=keys.release_key
    )


def _client_fn(context: Context) -> Client:
    config = config_from_run_config(dict(context.run_config))
    keys = DeviceKeys.load(_keys(config))
    devices = _devices(config, keys)
    provisioned = Provisioned(devices=devices, held_out_folder=config.output / "held-out")
    return make_client_fn(devices, seed=config.seed, held_out=provisioned.held_out)(context)


client_app = ClientApp(client_fn=_client_fn, mods=[_device_policy_mod])
