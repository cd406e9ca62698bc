"""``stamen certs``: test TLS certificates and SuperNode keys, checked against Flower itself.

The SuperNode keys are loaded with the very functions Flower 1.42 uses
(``flower-supernode --auth-supernode-private-key`` and ``flwr supernode register``); a real
``flower-superlink`` on the loopback interface serves the certificates in
``tests/integration/test_certs_on_a_superlink.py``.
"""

from __future__ import annotations

import argparse
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from flwr.cli.supernode.register import try_load_public_key
from flwr.supercore.primitives.asymmetric import bytes_to_public_key, public_key_to_bytes
from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication
from typer.testing import CliRunner

from stamen.errors import CertificateError, CertificateExistsError, StamenError
from stamen.server.certs import (
    add_supernode,
    make_certificates,
    parse_san,
)
from stamen.server.identities import DeviceRegistry
from stamen.simulation.cli.commands import app

runner = CliRunner()


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _sans(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def _private_pem(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("certs") / "out"
    return make_certificates(folder, supernodes=3, sans=["10.1.2.3", "link.example.org", "fd00::7"])


# ── the library ──────────────────────────────────────────────────────────────────────────


def test_ca_is_a_self_signed_certificate_authority(certs):
    ca = _cert(certs.ca_certificate)
    ca.verify_directly_issued_by(ca)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert constraints.critical and constraints.value.ca
    assert usage.critical and usage.value.key_cert_sign and not usage.value.digital_signature


def test_superlink_certificate_is_issued_by_the_ca_for_loopback_and_extra_names(certs):
    ca, leaf = _cert(certs.ca_certificate), _cert(certs.superlink_certificate)
    leaf.verify_directly_issued_by(ca)
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    sans = _sans(leaf)
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "link.example.org"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address(ip) for ip in ("127.0.0.1", "::1", "10.1.2.3", "fd00::7")
    ]
    assert certs.sans == (
        "DNS:localhost",
        "IP:127.0.0.1",
        "IP:::1",
        "IP:10.1.2.3",
        "DNS:link.example.org",
        "IP:fd00::7",
    )
    assert leaf.public_key() == _private_pem(certs.superlink_key).public_key()
    assert leaf.not_valid_after_utc <= ca.not_valid_after_utc


def test_a_different_ca_does_not_verify_the_superlink_certificate(certs, tmp_path):
    other = make_certificates(tmp_path / "other", supernodes=0)
    with pytest.raises(InvalidSignature):  # the issuer's name matches, its key does not
        _cert(certs.superlink_certificate).verify_directly_issued_by(_cert(other.ca_certificate))


def test_private_keys_are_owner_only_and_public_files_readable(certs):
    private = [certs.ca_key, certs.superlink_key, *(n.private_key for n in certs.supernodes)]
    public = [certs.ca_certificate, certs.superlink_certificate]
    public += [n.public_key for n in certs.supernodes]
    assert {_mode(path) for path in private} == {0o600}
    assert {_mode(path) for path in public} == {0o644}
    assert _mode(certs.folder) == 0o700
    assert sorted(p.name for p in certs.folder.iterdir()) == sorted(p.name for p in certs.files())


def test_supernode_keys_load_with_the_functions_flower_uses(certs):
    seen = set()
    for node in certs.supernodes:
        # flower-supernode --auth-supernode-private-key: load_ssh_private_key, EC only
        args = argparse.Namespace(
            auth_supernode_private_key=str(node.private_key), auth_supernode_public_key=None
        )
        loaded = _try_setup_client_authentication(args)
        assert loaded is not None
        private, public = loaded
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert isinstance(private.curve, ec.SECP384R1)
        # flwr supernode register <pub>: load_ssh_public_key, EC on a NIST curve
        registered = try_load_public_key(node.public_key)
        assert registered == public_key_to_bytes(public)
        assert bytes_to_public_key(registered) == public
        seen.add(registered)
    assert len(seen) == len(certs.supernodes) == 3  # one key per node
    assert [n.name for n in certs.supernodes] == ["supernode-0", "supernode-1", "supernode-2"]


def test_refuses_to_overwrite_without_force_and_writes_nothing(tmp_path):
    first = make_certificates(tmp_path, supernodes=1)
    before = {p: p.read_bytes() for p in first.files()}
    with pytest.raises(CertificateExistsError, match="--force") as caught:
        make_certificates(tmp_path, supernodes=2)
    assert isinstance(caught.value, StamenError) and isinstance(caught.value, FileExistsError)
    assert "ca.key" in str(caught.value)
    assert {p: p.read_bytes() for p in first.files()} == before
    assert not (tmp_path / "supernode-1.key").exists()  # all-or-nothing
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files

    again = make_certificates(tmp_path, supernodes=2, force=True)
    assert first.ca_certificate.read_bytes() != before[first.ca_certificate]
    assert again.supernodes[1].private_key.is_file()
    assert _mode(again.ca_key) == 0o600


def test_add_supernode_writes_one_more_pair_and_refuses_to_overwrite(certs, tmp_path):
    node = add_supernode(tmp_path, "edge-7")
    assert (node.private_key.name, node.public_key.name) == ("edge-7.key", "edge-7.pub")
    assert _mode(node.private_key) == 0o600
    assert try_load_public_key(node.public_key)
    with pytest.raises(CertificateExistsError, match="edge-7.key"):
        add_supernode(tmp_path, "edge-7")
    add_supernode(tmp_path, "edge-7", force=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sans": ["bad host!"]}, "neither an IP address nor a DNS name"),
        ({"sans": ["-lead.example"]}, "neither an IP address"),
        ({"supernodes": -1}, "--supernodes"),
        ({"days": 0}, "--days"),
    ],
)
def test_bad_requests_are_refused_before_anything_is_written(tmp_path, kwargs, message):
    with pytest.raises(CertificateError, match=message):
        make_certificates(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", "node.key"])
def test_node_names_must_be_plain_file_names(tmp_path, name):
    with pytest.raises(CertificateError, match="SuperNode name"):
        add_supernode(tmp_path, name)


def test_parse_san_tells_addresses_from_names():
    assert parse_san("192.168.0.9") == x509.IPAddress(ipaddress.ip_address("192.168.0.9"))
    assert parse_san("[::1]") == x509.IPAddress(ipaddress.ip_address("::1"))
    assert parse_san("SuperLink.Example.") == x509.DNSName("superlink.example")
    assert parse_san("*.example.org") == x509.DNSName("*.example.org")


# ── the command line ─────────────────────────────────────────────────────────────────────


def test_cli_make_writes_the_files_and_names_them(tmp_path):
    out = tmp_path / "certs"
    result = runner.invoke(
        app,
        ["certs", "make", str(out), "--supernodes", "2", "--san", "192.0.2.10", "--days", "30"],
        env={"COLUMNS": "400"},
    )
    assert result.exit_code == 0, (result.output, result.exception)
    names = ["ca.key", "ca.crt", "superlink.key", "superlink.crt"]
    names += ["supernode-0.key", "supernode-0.pub", "supernode-1.key", "supernode-1.pub"]
    names += ["devices.toml"]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    for name in names:
        assert name in result.output
    assert "IP:192.0.2.10" in result.output and "-rw-------" in result.output
    assert f"--auth-supernode-private-key {out / 'supernode-1.key'}" in result.output
    leaf = _cert(out / "superlink.crt")
    assert ipaddress.ip_address("192.0.2.10") in _sans(leaf).get_values_for_type(x509.IPAddress)
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert 30 <= lifetime.days <= 31


def test_cli_refuses_to_overwrite_with_a_one_line_error(tmp_path):
    out = tmp_path / "certs"
    assert runner.invoke(app, ["certs", "make", str(out), "--supernodes", "1"]).exit_code == 0
    before = (out / "ca.key").read_bytes()
    result = runner.invoke(app, ["certs", "make", str(out), "--supernodes", "1"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "already exist" in lines[0] and "--force" in lines[0] and "ca.key" in lines[0]
    assert result.stdout == "" and result.exception is not None  # SystemExit, no traceback
    assert isinstance(result.exception, SystemExit)
    assert (out / "ca.key").read_bytes() == before

    forced = runner.invoke(app, ["certs", "make", str(out), "--supernodes", "1", "--force"])
    assert forced.exit_code == 0, forced.output
    assert (out / "ca.key").read_bytes() != before


def test_cli_node_adds_a_key_pair_and_reports_bad_sans(tmp_path):
    result = runner.invoke(app, ["certs", "node", str(tmp_path), "site-a"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert "site-a.key" in result.output and "flwr supernode register" in result.output
    assert try_load_public_key(tmp_path / "site-a.pub")

    again = runner.invoke(app, ["certs", "node", str(tmp_path), "site-a"])
    assert again.exit_code == 2 and "site-a.key" in again.stderr and "--force" in again.stderr

    bad = runner.invoke(app, ["certs", "make", str(tmp_path / "x"), "--san", "no spaces"])
    assert bad.exit_code == 2
    assert bad.stderr.startswith("error: SAN 'no spaces'"), bad.output


# ── the device registry ──────────────────────────────────────────────────────────────────


def _registered(folder: Path) -> dict[str, tuple[int, str]]:
    """Node name -> (device id, public key line) in ``folder``'s devices.toml."""
    registry = DeviceRegistry.read(folder / "devices.toml")
    return {e.node: (e.id, e.public_key) for e in registry.entries}


def test_make_registers_node_i_as_device_i_with_its_own_public_key(certs):
    assert _registered(certs.folder) == {
        node.name: (i, node.public_key.read_text().strip())
        for i, node in enumerate(certs.supernodes)
    }
    assert certs.registry == certs.folder / "devices.toml" and _mode(certs.registry) == 0o644


def test_add_supernode_registers_its_device_and_a_replaced_key_keeps_it(tmp_path):
    make_certificates(tmp_path, supernodes=2)
    add_supernode(tmp_path, "phone-9", device_id=9)
    first = _registered(tmp_path)["phone-9"]
    assert first == (9, (tmp_path / "phone-9.pub").read_text().strip())
    add_supernode(tmp_path, "phone-9", force=True)  # a rotated key: same device, new key
    rotated = _registered(tmp_path)["phone-9"]
    assert rotated[0] == 9 and rotated[1] != first[1]
    assert rotated[1] == (tmp_path / "phone-9.pub").read_text().strip()
    add_supernode(tmp_path, "spare")  # no --device-id: not a device
    assert "spare" not in _registered(tmp_path) and len(_registered(tmp_path)) == 3


def test_a_device_id_held_by_another_node_is_refused_and_nothing_is_written(tmp_path):
    make_certificates(tmp_path, supernodes=2)
    before = (tmp_path / "devices.toml").read_bytes()
    with pytest.raises(CertificateError, match="device id 1 is supernode-1's already"):
        add_supernode(tmp_path, "intruder", device_id=1)
    with pytest.raises(CertificateError, match="--device-id is -1"):
        add_supernode(tmp_path, "intruder", device_id=-1)
    assert not (tmp_path / "intruder.key").exists()
    assert (tmp_path / "devices.toml").read_bytes() == before


def test_cli_node_registers_the_device_id_it_is_given(tmp_path):
    assert runner.invoke(app, ["certs", "make", str(tmp_path), "--supernodes", "1"]).exit_code == 0
    result = runner.invoke(
        app, ["certs", "node", str(tmp_path), "site-b", "--device-id", "4"], env={"COLUMNS": "400"}
    )
    assert result.exit_code == 0, result.output
    assert "devices.toml" in result.output and "site-b serves device 4" in result.output
    assert _registered(tmp_path)["site-b"][0] == 4
    taken = runner.invoke(app, ["certs", "node", str(tmp_path), "site-c", "--device-id", "0"])
    assert taken.exit_code == 2 and "device id 0 is supernode-0's already" in taken.stderr
