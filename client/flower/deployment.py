"""The device side of Stamen's ``deployment`` runtime (``stamen.runtimes``), on a SuperNode.

A SuperNode names its device in ``--node-config``; the ClientApp opens that
:class:`~stamen.client.Device` store for every message and trains on what the person
recorded there. Keys of ``context.node_config``:

- ``device`` (required): the device folder (``stamen device init``);
- ``key-file``: the store key file, outside that folder (default ``<folder>.key``);
- ``device-id`` (required): the device's stable integer identity as the device declares
  it, by which a server without a device registry samples cohorts reproducibly (Flower's
  node ids are random per registration). A server with a registry (run-config key
  ``devices``) does not ask for it: it takes the id the node's authentication key is
  registered under (``stamen.server.identities``), whatever the device declares;
- ``secure-aggregation``: ``"required"`` (the default) or ``"optional"``. A device that
  requires secure aggregation refuses a training request that does not run Flower's
  SecAgg+ protocol, so its update never leaves it in the clear.

The device decides its own policy and fails closed: a missing setting is an error, the
training loss is reported only when the request says the run is not private
(``fit-metrics``), and the device's own noise (distributed DP) is drawn from fresh
operating-system randomness the server cannot reproduce. The device's held-out
evaluation is the simulation's business: a deployed device does not evaluate.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, MessageType
from flwr.client import Client, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from stamen.client.flower.clientapp import ClientRuntime
from stamen.errors import ConfigError, SecureAggregationRequired

__all__ = [
    "DevicePolicy",
    "deployment_client_fn",
    "device_policy",
    "runtime",
]

_KEY_BYTES = 32


class DevicePolicy:
    """What a SuperNode's ``node_config`` says (see module docstring), validated."""

    def __init__(self, node_config: dict[str, Any]) -> None:
        missing = [k for k in ("device", "device-id") if str(node_config.get(k, "")) == ""]
        if missing:
            raise ConfigError(f"node config: missing {missing} (flower-supernode --node-config)")
        self.folder = Path(str(node_config["device"]))
        key_file = str(node_config.get("key-file", ""))
        self.key_file = (
            Path(key_file) if key_file else self.folder.parent / f"{self.folder.name}.key"
        )
        try:
            self.device_id = int(node_config["device-id"])
        except (TypeError, ValueError):
            raise ConfigError(
                f"node config: device-id must be an integer, got {node_config['device-id']!r}"
            ) from None
        mode = str(node_config.get("secure-aggregation", "required"))
        if mode not in ("required", "optional"):
            raise ConfigError(
                f"node config: secure-aggregation must be 'required' or 'optional', got {mode!r}"
            )
        self.requires_secagg = mode == "required"

    def store_key(self) -> bytes:
        """The device's store key, read from its key file."""
        if not self.key_file.is_file():
            raise ConfigError(f"{self.key_file}: no store key file for device {self.folder}")
        key = self.key_file.read_bytes()
        if len(key) != _KEY_BYTES:
            raise ConfigError(f"{self.key_file}: {len(key)} bytes; a store key is {_KEY_BYTES}")
        return key


def device_policy(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """The device's side of secure aggregation: every training message goes through
    Flower's SecAgg+ mod; a plain one is refused where the device requires SecAgg+."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    if DevicePolicy(dict(context.node_config)).requires_secagg:
        raise SecureAggregationRequired(
            "this device requires secure aggregation and refuses a plain training request"
        )
    return call_next(msg, context)


class _DeployedDevice(NumPyClient):
    """The device behind one message: answers its stable id from the node config, and
    opens the store and loads the model (torch) only for ``fit`` and ``evaluate``."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.policy = DevicePolicy(dict(context.node_config))

    def get_properties(self, config: dict) -> dict:
        """The device's self-declared id, for a server without a device registry."""
        from stamen.models.mf.settings import DEVICE_ID_KEY

        return {DEVICE_ID_KEY: self.policy.device_id}

    def _client(self) -> NumPyClient:
        import torch

        from stamen.client.device.device import Device
        from stamen.client.device.folder import MARKER_FILE
        from stamen.client.flower.app import DeviceClient, DeviceData

        torch.set_num_threads(1)
        policy = self.policy
        if not any((policy.folder / name).is_file() for name in ("device.db", MARKER_FILE)):
            raise ConfigError(f"{policy.folder}: no device here (stamen device init)")
        with Device.open(policy.folder, key=policy.store_key()) as device:
            items, catalog = device.history_indices(), device.catalog
            contexts, times = device.history_contexts(), device.history_times()
            release_key = device.release_key
        if catalog is None:
            raise ConfigError(f"{policy.folder}: no release installed (stamen device apply)")
        data = DeviceData(items, catalog, contexts, times)

        def ranking_example() -> tuple | None:
            with Device.open(policy.folder, key=policy.store_key()) as device:
                return device.ranking_example()

        def experiment_contribution(experiment: str, **window: Any) -> Any:
            with Device.open(policy.folder, key=policy.store_key()) as device:
                return device.experiment_contribution(experiment, **window)

        def off_policy_contribution(candidates: list[str], **window: Any) -> Any:
            with Device.open(policy.folder, key=policy.store_key()) as device:
                return device.off_policy_contribution(candidates, **window)

        return DeviceClient(
            data,
            self.context.state,
            seed=secrets.randbits(63),
            row=policy.device_id,
            release_key=release_key,
            ranking_example=ranking_example,
            experiment_contribution=experiment_contribution,
            off_policy_contribution=off_policy_contribution,
        )

    def fit(self, parameters: list, config: dict) -> tuple:
        """One local step on the person's events (``stamen.client.flower.app.DeviceClient.fit``)."""
        return self._client().fit(parameters, config)

    def evaluate(self, parameters: list, config: dict) -> tuple:
        """A deployed device holds no held-out items: it evaluates nothing."""
        return 0.0, 0, {}


def deployment_client_fn(context: Context) -> Client:
    """The ``client_fn`` of :data:`client_app` (see module docstring)."""
    return _DeployedDevice(context).to_client()


#: The ``deployment`` runtime's device side (``stamen.runtimes``): this module imports
#: neither torch nor Stamen's models until a message needs the device, so the SecAgg+
#: stages that only exchange keys and shares start fast.
runtime = ClientRuntime(client_fn=deployment_client_fn, mod=device_policy)
