"""``stamen certs check`` and ``stamen certs renew``: expiry seen before it bites, and a new
SuperLink certificate under the same CA (devices keep their ``ca.crt``)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from cryptography import x509
from typer.testing import CliRunner

from stamen.errors import CertificateError
from stamen.server.certs import (
    check_certificates,
    make_certificates,
    renew_superlink_certificate,
)
from stamen.simulation.cli.commands import app

runner = CliRunner()


def _check(folder, *flags: str) -> tuple[int, dict]:
    result = runner.invoke(app, ["certs", "check", str(folder), "--json", *flags])
    return result.exit_code, json.loads(result.output)


def test_check_names_expiring_expired_and_foreign_certificates(tmp_path) -> None:
    paths = make_certificates(tmp_path / "certs", supernodes=1, days=10)
    code, found = _check(paths.folder, "--warn-days", "5")
    assert code == 0 and [c["state"] for c in found["certificates"]] == ["valid", "valid"]
    code, found = _check(paths.folder)  # the default warning window is 30 days
    assert code == 1 and {c["state"] for c in found["certificates"]} == {"expiring"}
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=11)
    expired = check_certificates(paths.folder, now=later)
    assert [s.state(30) for s in expired] == ["expired", "expired"]
    assert expired[1].problem and expired[1].problem.startswith("expired on ")
    # a CA made again with --force no longer issued the SuperLink's certificate
    old_server = paths.superlink_certificate.read_bytes()
    make_certificates(paths.folder, supernodes=0, days=100, force=True)
    paths.superlink_certificate.write_bytes(old_server)
    code, found = _check(paths.folder, "--warn-days", "0")
    assert code == 2
    assert found["certificates"][1]["problem"].startswith("not issued by ca.crt")


def test_renew_keeps_the_ca_and_the_sans_and_cannot_outlive_the_ca(tmp_path) -> None:
    paths = make_certificates(tmp_path / "certs", supernodes=1, sans=["superlink.lan"], days=100)
    ca_before = paths.ca_certificate.read_bytes()
    server_before = paths.superlink_certificate.read_bytes()
    result = runner.invoke(app, ["certs", "renew", str(paths.folder), "--days", "50"])
    assert result.exit_code == 0, result.output
    assert paths.ca_certificate.read_bytes() == ca_before  # devices keep their ca.crt
    assert paths.superlink_certificate.read_bytes() != server_before
    ca = x509.load_pem_x509_certificate(ca_before)
    server = x509.load_pem_x509_certificate(paths.superlink_certificate.read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "superlink.lan" in sans.get_values_for_type(x509.DNSName)
    left = server.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=49) < left <= dt.timedelta(days=50)
    assert paths.superlink_key.stat().st_mode & 0o777 == 0o600
    assert _check(paths.folder)[0] == 0
    with pytest.raises(CertificateError, match=r"expires in \d+ days; a certificate it signs"):
        renew_superlink_certificate(paths.folder, days=200)
    failed = runner.invoke(app, ["certs", "renew", str(tmp_path / "nowhere")])
    assert failed.exit_code == 2 and "no such certificate" in failed.output
