"""``stamen certs``' certificates and SuperNode keys on a real ``flower-superlink`` on the
loopback interface: it serves our certificate to a client trusting only our CA, and its
node authentication accepts a registered SuperNode key and refuses another (the files
themselves: ``tests/server/test_certs.py``)."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess

import pytest
from cryptography import x509
from helpers.loopback import (
    BIN,
    flower_env,
    free_port,
    poll,
    running,
    superlink_command,
    supernode_command,
    text,
)

from stamen.server.certs import make_certificates

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs") / "out", supernodes=2)


def _handshake(port: int, context: ssl.SSLContext, server_hostname: str) -> bytes | None:
    """The peer's DER certificate after a verified TLS handshake; None if nobody listens yet."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=server_hostname) as tls:
                return tls.getpeercert(binary_form=True)
    except (ConnectionRefusedError, ConnectionResetError):
        return None


def test_a_real_superlink_serves_our_certificate_to_a_client_trusting_only_our_ca(certs, tmp_path):
    port = free_port()
    log = tmp_path / "superlink.log"
    trust_ours = ssl.create_default_context(cafile=str(certs.ca_certificate))  # CA only
    ours = x509.load_pem_x509_certificate(certs.superlink_certificate.read_bytes())
    with running(
        superlink_command(certs, port, tmp_path), env=flower_env(tmp_path / "home"), log=log
    ) as proc:
        peer: list[bytes] = []

        def ready() -> bool:
            der = _handshake(port, trust_ours, "127.0.0.1")
            peer.extend([der] if der else [])
            return der is not None

        poll(ready, proc=proc, log=log, what="TLS handshake with the SuperLink")
        assert x509.load_der_x509_certificate(peer[0]) == ours
        assert _handshake(port, trust_ours, "localhost") == peer[0]  # the DNS SAN works too

        stranger = make_certificates(tmp_path / "stranger", supernodes=0)
        trust_other = ssl.create_default_context(cafile=str(stranger.ca_certificate))
        with pytest.raises(ssl.SSLCertVerificationError):
            _handshake(port, trust_other, "127.0.0.1")
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch|match"):
            _handshake(port, trust_ours, "not-our-name.example")
        assert proc.poll() is None, text(log)


def test_superlink_node_auth_accepts_a_registered_key_and_refuses_another(certs, tmp_path):
    port = free_port()
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink.local]\naddress = "127.0.0.1:{port}"\n'
        f'root-certificates = "{certs.ca_certificate}"\n'
    )
    env, log = flower_env(home), tmp_path / "superlink.log"
    trust_ours = ssl.create_default_context(cafile=str(certs.ca_certificate))
    command = superlink_command(certs, port, tmp_path, "--enable-supernode-auth")
    with running(command, env=env, log=log) as link:
        poll(
            lambda: _handshake(port, trust_ours, "127.0.0.1") is not None,
            proc=link,
            log=log,
            what="TLS handshake with the SuperLink",
        )
        known, unknown = certs.supernodes[0], certs.supernodes[1]
        register = subprocess.run(
            [str(BIN / "flwr"), "supernode", "register", str(known.public_key), "local"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert register.returncode == 0, register.stdout + register.stderr
        found = re.search(r"SuperNode (\d+) registered", register.stdout)
        assert found, register.stdout
        node_id = found.group(1)
        with (
            running(
                supernode_command(known.private_key, certs, port), env=env, log=tmp_path / "a.log"
            ),
            running(
                supernode_command(unknown.private_key, certs, port), env=env, log=tmp_path / "b.log"
            ),
        ):
            poll(
                lambda: f"Activated node_id={node_id}" in text(log),
                proc=link,
                log=log,
                what="the registered SuperNode connecting over TLS",
            )
            poll(
                lambda: "No SuperNode found with the given public key" in text(log),
                proc=link,
                log=log,
                what="the unregistered SuperNode being refused",
            )
        assert text(log).count("Activated node_id=") == 1, text(log)
