"""Devices' identities in a deployment: bound to the node's authentication key, never
declared by the device.

Flower 1.42 binds a node to its key itself: the SuperLink stores each registered node's
public key (``flwr supernode register``), a SuperNode signs every Fleet API request with
its private key (``--auth-supernode-private-key``), and the SuperLink refuses a request
whose signature does not verify or whose key is not the one registered for the node id
it names (``flwr.superlink.routers.fleet.node_auth.authenticate_node``). So whoever
answers the messages sent to node *n* holds *n*'s private key, and the ServerApp reads
every node's registered public key from its Grid (``Grid.get_nodes()``:
``NodeInfo.public_key``, PEM). No proof of our own is needed on top of Flower's.

The operator's **device registry** (:data:`REGISTRY_FILE`, written by ``stamen certs make``
and ``stamen certs node --device-id``) maps public keys to device ids::

    [[device]]
    id = 0
    node = "supernode-0"
    public-key = "ecdsa-sha2-nistp384 AAAA…"

:class:`KeyIdentities` gives each node the id its registered key has in the registry; a
node whose key is not in it, or that has no key, gets no id (the strategy leaves it out
of the round, recorded under ``unidentified`` with the reason), and two nodes holding one
device's key both get the same id (the strategy refuses both as duplicates).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from stamen.errors import ConfigError
from stamen.privacy import write_atomically

__all__ = [
    "REGISTRY_FILE",
    "DeviceKey",
    "DeviceRegistry",
    "KeyIdentities",
    "NodeKey",
    "write_registry",
]

#: The registry's file name in a certificates folder.
REGISTRY_FILE = "devices.toml"

_HEADER = (
    "# Stamen's device registry: the device id each SuperNode authentication key serves\n"
    "# (the deployment's run-config key `devices`). Written by `stamen certs`.\n"
)


class NodeKey(Protocol):
    """What the strategy needs of Flower's ``NodeInfo``: the node id and its registered
    public key (PEM; empty when the SuperLink knows none)."""

    node_id: int
    public_key: bytes


@dataclass(frozen=True)
class DeviceKey:
    """One registry entry: device ``id`` served by the node holding ``public_key``."""

    id: int
    node: str
    public_key: str  # one OpenSSH line, as in the node's .pub file


def _canonical(key: object) -> bytes:
    """The DER SubjectPublicKeyInfo of an EC public key on a NIST curve."""
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(f"not an EC public key ({type(key).__name__})")
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _from_openssh(line: str) -> bytes:
    try:
        key = serialization.load_ssh_public_key(line.strip().encode())
    except (ValueError, TypeError, UnicodeError) as error:
        raise ValueError(f"not an OpenSSH public key ({error})") from None
    return _canonical(key)


class DeviceRegistry:
    """The operator's registry of device ids by public key (module docstring)."""

    def __init__(self, entries: Sequence[DeviceKey], *, source: str) -> None:
        """Validate ``entries`` (all problems, then one :class:`ConfigError` naming
        ``source`` and each entry): ids are integers ``>= 0``, keys OpenSSH EC public keys,
        no id and no key twice."""
        self.source = source
        self.entries = tuple(entries)
        problems: list[str] = []
        self._ids: dict[bytes, int] = {}
        first_of: dict[int, int] = {}
        for n, entry in enumerate(self.entries, 1):
            where = f"{source}: device entry {n} ({entry.node or 'no node name'})"
            if isinstance(entry.id, bool) or not isinstance(entry.id, int) or entry.id < 0:
                problems.append(f"{where}: id must be an integer >= 0, got {entry.id!r}")
                continue
            try:
                key = _from_openssh(entry.public_key)
            except ValueError as error:
                problems.append(f"{where}: public-key is {error}")
                continue
            if entry.id in first_of:
                problems.append(f"{where}: device id {entry.id} is entry {first_of[entry.id]}'s")
            elif key in self._ids:
                problems.append(f"{where}: its public key is device {self._ids[key]}'s too")
            else:
                first_of[entry.id] = n
                self._ids[key] = entry.id
        if problems:
            raise ConfigError("\n".join(problems))

    @classmethod
    def read(cls, path: str | Path) -> DeviceRegistry:
        """The registry in ``path`` (:data:`REGISTRY_FILE`'s format)."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no device registry (stamen certs make)") from None
        except (OSError, UnicodeError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"{path}: unreadable device registry ({error})") from None
        unknown = sorted(set(data) - {"device"})
        rows = data.get("device", [])
        if unknown or not isinstance(rows, list):
            raise ConfigError(f"{path}: a device registry holds [[device]] tables only")
        return cls([_entry(row, n, path) for n, row in enumerate(rows, 1)], source=str(path))

    @property
    def ids(self) -> list[int]:
        """The registered device ids, sorted."""
        return sorted(self._ids.values())

    def device_id(self, public_key_pem: bytes) -> int | None:
        """The device id of ``public_key_pem`` (the SuperLink's PEM), ``None`` when it is
        not registered."""
        key = _canonical(serialization.load_pem_public_key(public_key_pem))
        return self._ids.get(key)


def _entry(row: Any, n: int, path: Path) -> DeviceKey:
    where = f"{path}: device entry {n}"
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: not a table")
    unknown = sorted(set(row) - {"id", "node", "public-key"})
    missing = [k for k in ("id", "public-key") if k not in row]
    if unknown or missing:
        raise ConfigError(f"{where}: unknown keys {unknown}, missing {missing}")
    return DeviceKey(id=row["id"], node=str(row.get("node", "")), public_key=str(row["public-key"]))


def write_registry(path: str | Path, entries: Iterable[DeviceKey]) -> None:
    """Write ``entries`` (validated as :class:`DeviceRegistry` does) to ``path``, sorted by
    device id, replaced atomically."""
    path = Path(path)
    registry = DeviceRegistry(list(entries), source=str(path))
    body = _HEADER + "".join(  # JSON's string escapes are valid TOML
        f"\n[[device]]\nid = {e.id}\nnode = {json.dumps(e.node)}\n"
        f"public-key = {json.dumps(e.public_key.strip())}\n"
        for e in sorted(registry.entries, key=lambda e: e.id)
    )
    write_atomically(path, body.encode(), mode=0o644)


class KeyIdentities:
    """Device ids of connected nodes, from their registered keys (module docstring).

    Args:
        registry: the operator's device registry.
        nodes: the SuperLink's nodes with their keys (the run's ``Grid.get_nodes``).
    """

    def __init__(self, registry: DeviceRegistry, nodes: Callable[[], Iterable[NodeKey]]) -> None:
        self.registry = registry
        self.nodes = nodes

    def __call__(self, node_ids: Sequence[str]) -> list[int | str]:
        """For each node id (a Flower node id, as the strategy's ``cid``), its device id or
        why it has none."""
        keys: Mapping[int, bytes] = {int(n.node_id): bytes(n.public_key) for n in self.nodes()}
        return [self._device_id(keys.get(int(node_id))) for node_id in node_ids]

    def _device_id(self, key: bytes | None) -> int | str:
        if key is None:
            return "not among the SuperLink's nodes"
        if not key:
            return "the SuperLink holds no public key for it"
        try:
            found = self.registry.device_id(key)
        except (ValueError, TypeError) as error:
            return f"its public key is unreadable ({error})"
        if found is None:
            return f"its public key is not in the device registry {self.registry.source}"
        return found
