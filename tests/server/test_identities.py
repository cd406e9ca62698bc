"""Devices' identities bound to their nodes' authentication keys
(``stamen.server.identities``): the device registry, the ids the strategy takes from it
whatever the devices declare, and every node it refuses, with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.cli.supernode.register import try_load_public_key
from flwr.common import Code, GetPropertiesRes, Status
from flwr.proto.node_pb2 import NodeInfo
from helpers.deployment_runs import release_init, run_config
from helpers.static_clients import StaticClients
from helpers.updates import zero_shared
from typer.testing import CliRunner

from stamen.errors import ConfigError
from stamen.models.mf.settings import DEVICE_ID_KEY
from stamen.privacy import SecAggSettings
from stamen.server.certs import CertificatePaths, add_supernode, make_certificates
from stamen.server.deployment import Deployment, RunStatus
from stamen.server.identities import DeviceKey, DeviceRegistry, KeyIdentities, write_registry
from stamen.server.settings import ServerSettings
from stamen.server.strategy import FederatedAveraging
from stamen.simulation.cli.commands import app

NODES = 4


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> CertificatePaths:
    folder = tmp_path_factory.mktemp("certs")
    paths = make_certificates(folder, supernodes=NODES)
    add_supernode(folder, "stranger")  # a key the registry does not hold
    return paths


def _pem(public_key: Path) -> bytes:
    """The key as the SuperLink holds it after ``flwr supernode register`` (PEM)."""
    return try_load_public_key(public_key)


def _strategy(population: int = NODES) -> FederatedAveraging:
    settings = ServerSettings(rounds=2, clients_per_round=2, secagg=SecAggSettings(enabled=False))
    return FederatedAveraging(settings, initial=zero_shared(10, 2), population=population)


def _keyed(clients: StaticClients, keys: dict[str, bytes], certs) -> KeyIdentities:
    """Identities of ``clients``' nodes holding ``keys`` (node id -> PEM; a node not named
    is not among the SuperLink's nodes)."""
    registry = DeviceRegistry.read(certs.registry)
    nodes = [NodeInfo(node_id=int(cid), public_key=key) for cid, key in keys.items()]
    return KeyIdentities(registry, lambda: nodes)


def _never_asked(ins, timeout, group_id):  # noqa: ANN001, ANN202
    raise AssertionError("a node with a registered key is never asked for its id")


def test_each_node_gets_the_id_its_key_is_registered_under_whatever_it_declares(certs):
    clients = StaticClients(NODES)
    proxies = sorted(clients.all().values(), key=lambda p: p.device)
    # the node declaring device d holds the key of device (d + 1) % NODES
    keys = {p.cid: _pem(certs.supernodes[(p.device + 1) % NODES].public_key) for p in proxies}
    for proxy in proxies:
        proxy.get_properties = _never_asked
    strategy = _strategy()
    strategy.identify = _keyed(clients, keys, certs)
    devices = strategy.connected_devices(clients)  # type: ignore[arg-type]
    assert {d: p.cid for d, p in devices.items()} == {
        (p.device + 1) % NODES: p.cid for p in proxies
    }
    assert strategy._record.unidentified is None


def test_a_forged_device_id_claim_is_not_believed(certs):
    clients = StaticClients(NODES)
    proxies = sorted(clients.all().values(), key=lambda p: p.device)
    forger = proxies[0]  # holds device 0's key, declares device 3

    def claiming(ins, timeout, group_id):  # noqa: ANN001, ANN202
        return GetPropertiesRes(Status(Code.OK, ""), properties={DEVICE_ID_KEY: 3})

    forger.get_properties = claiming
    keys = {p.cid: _pem(certs.supernodes[p.device].public_key) for p in proxies}
    declared = _strategy().connected_devices(clients)  # type: ignore[arg-type]
    assert 0 not in declared and 3 not in declared  # self-declared: the forger spoils device 3
    keyed = _strategy()
    keyed.identify = _keyed(clients, keys, certs)
    devices = keyed.connected_devices(clients)  # type: ignore[arg-type]
    assert devices[0] is forger and devices[3] is proxies[3] and len(devices) == NODES


def test_unregistered_keyless_or_unknown_nodes_are_left_out_with_the_reason(certs):
    clients = StaticClients(NODES)
    proxies = sorted(clients.all().values(), key=lambda p: p.device)
    stranger, keyless, gone, known = proxies
    keys = {
        stranger.cid: _pem(certs.folder / "stranger.pub"),
        keyless.cid: b"",
        known.cid: _pem(certs.supernodes[2].public_key),
    }  # ``gone`` is not among the SuperLink's nodes
    strategy = _strategy()
    strategy.identify = _keyed(clients, keys, certs)
    devices = strategy.connected_devices(clients)  # type: ignore[arg-type]
    assert devices == {2: known}
    reasons = {u.node: u.reason for u in strategy._record.unidentified or []}
    assert reasons == {
        stranger.cid: f"its public key is not in the device registry {certs.registry}",
        keyless.cid: "the SuperLink holds no public key for it",
        gone.cid: "not among the SuperLink's nodes",
    }


def test_two_nodes_holding_one_devices_key_are_both_refused(certs):
    clients = StaticClients(NODES)
    proxies = sorted(clients.all().values(), key=lambda p: p.device)
    keys = {p.cid: _pem(certs.supernodes[p.device].public_key) for p in proxies}
    keys[proxies[3].cid] = keys[proxies[1].cid]  # a copied key
    strategy = _strategy()
    strategy.identify = _keyed(clients, keys, certs)
    devices = strategy.connected_devices(clients)  # type: ignore[arg-type]
    assert sorted(devices) == [0, 2]
    reasons = {u.node: u.reason for u in strategy._record.unidentified or []}
    assert reasons == {
        proxies[1].cid: "device id 1 claimed by 2 nodes",
        proxies[3].cid: "device id 1 claimed by 2 nodes",
    }


def test_a_registered_id_outside_the_population_is_refused(certs):
    clients = StaticClients(NODES)
    keys = {p.cid: _pem(certs.supernodes[p.device].public_key) for p in clients.all().values()}
    strategy = _strategy(population=3)
    strategy.identify = _keyed(clients, keys, certs)
    assert sorted(strategy.connected_devices(clients)) == [0, 1, 2]  # type: ignore[arg-type]
    (outside,) = strategy._record.unidentified or []
    assert outside.reason == "device-id 3 is outside [0, 3) (the population)"


def test_a_bad_registry_names_every_problem_with_its_entry(certs, tmp_path):
    key = [certs.supernodes[i].public_key.read_text().strip() for i in range(3)]
    ed25519 = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    entries = [
        DeviceKey(id=0, node="a", public_key=key[0]),
        DeviceKey(id=0, node="b", public_key=key[1]),  # id taken
        DeviceKey(id=1, node="c", public_key=key[0]),  # key taken
        DeviceKey(id=-2, node="d", public_key=key[2]),
        DeviceKey(id=2, node="e", public_key="ecdsa-sha2-nistp384 AAAA"),
        DeviceKey(id=3, node="f", public_key=ed25519),
    ]
    with pytest.raises(ConfigError) as caught:
        DeviceRegistry(entries, source="reg.toml")
    assert str(caught.value).splitlines() == [
        "reg.toml: device entry 2 (b): device id 0 is entry 1's",
        "reg.toml: device entry 3 (c): its public key is device 0's too",
        "reg.toml: device entry 4 (d): id must be an integer >= 0, got -2",
        "reg.toml: device entry 5 (e): public-key is not an OpenSSH public key (Invalid data)",
        "reg.toml: device entry 6 (f): public-key is not an EC public key (Ed25519PublicKey)",
    ]
    with pytest.raises(ConfigError, match="no device registry"):
        DeviceRegistry.read(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text('[[device]]\nid = 0\npublic = "x"\n')
    with pytest.raises(ConfigError, match=r"bad.toml: device entry 1: unknown keys \['public'\]"):
        DeviceRegistry.read(tmp_path / "bad.toml")


def test_a_written_registry_reads_back(certs, tmp_path):
    entries = [
        DeviceKey(id=5, node="x", public_key=certs.supernodes[1].public_key.read_text()),
        DeviceKey(id=2, node="y", public_key=certs.supernodes[0].public_key.read_text()),
    ]
    write_registry(tmp_path / "devices.toml", entries)
    registry = DeviceRegistry.read(tmp_path / "devices.toml")
    assert registry.ids == [2, 5]
    assert registry.device_id(_pem(certs.supernodes[1].public_key)) == 5
    assert registry.device_id(_pem(certs.supernodes[2].public_key)) is None


def test_the_run_config_names_the_registry_which_must_fit_the_population(certs, tmp_path):
    releases, key = release_init(tmp_path)
    registry = str(certs.registry)
    deployment = Deployment(run_config(tmp_path, releases, key, devices=registry))
    assert deployment.devices is not None and deployment.devices.ids == list(range(NODES))
    assert Deployment(run_config(tmp_path, releases, key)).devices is None
    with pytest.raises(ConfigError, match=r"device ids \[3\] are outside \[0, 3\)"):
        Deployment(run_config(tmp_path, releases, key, devices=registry, population=3))
    with pytest.raises(ConfigError, match="nowhere.toml: no device registry"):
        Deployment(run_config(tmp_path, releases, key, devices=str(tmp_path / "nowhere.toml")))


def test_a_warning_is_recorded_with_the_runs_status(tmp_path):
    status = RunStatus(tmp_path, run_id=4)
    status.write("running")
    status.warn("identities are self-declared")
    body = json.loads((tmp_path / "status.json").read_text())
    assert (body["status"], body["warnings"]) == ("running", ["identities are self-declared"])
    status.write("completed")
    body = json.loads((tmp_path / "status.json").read_text())
    assert (body["status"], body["warnings"]) == ("completed", ["identities are self-declared"])
    said = CliRunner().invoke(app, ["deploy", "status", str(tmp_path)])
    assert said.exit_code == 0 and "warning: identities are self-declared" in said.output
