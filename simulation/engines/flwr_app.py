"""The ``simulation`` runtime of Stamen's one Flower App (``flwr run .``; ``stamen.runtimes``).

``pyproject.toml`` names Stamen's ServerApp and ClientApp and sets ``runtime =
"simulation"``; they run :func:`serve` and :data:`client_runtime` from here. The run config
(``[tool.flwr.app.config]``, overridable with ``flwr run . --run-config "k=v ..."``) holds
flat kebab-case keys, one for each field of ``SimulationConfig`` (:data:`RUN_CONFIG_KEYS`,
derived by ``stamen.server.run_config``): ``dataset``, ``data-dir``, ``num-server-rounds``,
``clients-per-round``, ``eval-every``, ``seed``, ``output``, ``synthetic-users``; SecAgg+:
``secure-aggregation``, ``secagg-num-shares``, ``secagg-clipping-range`` …; user-level DP:
``dp`` (``off``, ``central`` or ``distributed``), ``dp-epsilon`` (target ε), ``dp-delta``,
``dp-noise-multiplier``, ``dp-clip-norm``; the model's sections (``local-dim``,
``two-tower-hidden`` …); the pipeline's ranker after training: ``ranker-rounds``,
``ranker-clients-per-round``, ``ranker-hidden``, ``ranker-local-lr`` …. An empty value keeps
the default.
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
from flwr.client import Client
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Message
from flwr.server import Grid
from threadpoolctl import threadpool_limits

from stamen.client.device.keys import DeviceKeys
from stamen.client.flower.app import make_client_fn
from stamen.client.flower.clientapp import ClientRuntime
from stamen.client.flower.virtual import VirtualDevices
from stamen.privacy import generate_key, generate_signing_key
from stamen.runtimes import without_runtime
from stamen.server.app import run_rounds
from stamen.server.checkpoint import CheckpointStore
from stamen.server.run_config import read_run_config, run_config_keys, validate
from stamen.simulation.config import SimulationConfig
from stamen.simulation.engines.devices import Provisioned
from stamen.simulation.engines.flower import build_ranker_strategy, build_strategy, provision_run
from stamen.simulation.experiment import load_for_config, privacy_section
from stamen.simulation.protocol.device_evaluation import evaluate_tasks
from stamen.simulation.protocol.report import write_results

__all__ = ["RUN_CONFIG_KEYS", "client_runtime", "config_from_run_config", "serve"]

_log = logging.getLogger("stamen")

#: Settings a ``flwr run`` does not read: Flower's federation config places the devices,
#: the app runs no centralised baseline, and Flower is its engine.
_NOT_READ = ("cpus_per_client", "ray_address", "centralised", "engine")

#: Run-config key -> ``SimulationConfig`` field path.
RUN_CONFIG_KEYS = run_config_keys(SimulationConfig, exclude=_NOT_READ)


def config_from_run_config(run_config: dict) -> SimulationConfig:
    """Flower's flat run config as Stamen's settings (empty values: defaults); one error
    names every unknown key and bad value."""
    given = read_run_config(without_runtime(run_config), RUN_CONFIG_KEYS, source="flwr run config")
    return validate(SimulationConfig, given)


def _keys(config: SimulationConfig) -> Path:
    return config.output / "device-keys"


def serve(grid: Grid, context: Context) -> None:
    """The ServerApp's body in the ``simulation`` runtime (module docstring).

    Its BLAS runs single-threaded: Flower runs this body in a thread while the simulation
    engine starts Ray in another, and OpenBLAS's thread pool, used meanwhile, was seen to
    spin forever in ``exec_blas`` (twice in this project's test runs, each during the
    devices' provisioning). The server's own arithmetic is small; the devices compute in
    Ray's processes, unaffected."""
    with threadpool_limits(limits=1, user_api="blas"):
        _serve(grid, context)


def _serve(grid: Grid, context: Context) -> None:
    config = config_from_run_config(dict(context.run_config))
    dataset, source = load_for_config(config, say=_log.warning)
    split = config.split(dataset.interactions)
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
        "federated": {"rounds": [record.to_json() for record in strategy.history]},
        "privacy": privacy_section(strategy.privacy_report(), config),
    }
    if config.ranker.rounds:  # then the pipeline's ranker, on the same devices
        ranker = build_ranker_strategy(
            config, split, _devices(config, keys), releases, release_key=release_private
        )
        run_rounds(grid, context, ranker)
        results["ranker"] = {
            "rounds": [record.to_json() for record in ranker.history],
            "privacy": ranker.privacy_report(),
        }
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
    tasks = evaluate_tasks(provisioned.held_out, cutoffs=config.protocol.cutoffs)
    return make_client_fn(devices, seed=config.seed, evaluate_tasks=tasks)(context)


#: The ``simulation`` runtime's device side (``stamen.runtimes``).
client_runtime = ClientRuntime(client_fn=_client_fn, mod=_device_policy_mod)
