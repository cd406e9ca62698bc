"""The nginx configuration of the closed control plane (``stamen.server.proxy``): what each
listener forwards, that nginx itself accepts it (``nginx -t``), that every bad option is
named in one error, and that Flower's own paths are the ones it sorts by (the proxy on a
running SuperLink: ``tests/integration/test_closed_control_plane.py``)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from stamen.errors import ConfigError
from stamen.server.certs import CertificatePaths, make_certificates
from stamen.server.proxy import (
    CONTROL_PREFIX,
    ENROLMENT_PATHS,
    FLEET_PREFIX,
    UPSTREAM_IDLE_S,
    ProxyPaths,
    parse_address,
    write_proxy_config,
)
from stamen.simulation.cli.commands import app


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs") / "out", supernodes=0)


def _write(
    certs: CertificatePaths, tmp_path: Path, device_address: str, **options: Any
) -> ProxyPaths:
    """The proxy's configuration in ``tmp_path/proxy`` for the SuperLink at 127.0.0.1:9092."""
    return write_proxy_config(
        tmp_path / "proxy",
        certs=certs.folder,
        superlink="127.0.0.1:9092",
        device_address=device_address,
        **options,
    )


def _servers(text: str) -> list[str]:
    """The configuration's ``server { … }`` blocks, in order."""
    return re.findall(r"\n    server \{\n(.*?)\n    \}", text, flags=re.S)


def test_the_device_facing_listener_forwards_the_fleet_api_only(certs, tmp_path):
    paths = _write(certs, tmp_path, "0.0.0.0:9443")
    text = paths.config.read_text()
    (device,) = _servers(text)  # no operator-facing listener unless asked
    assert "listen 0.0.0.0:9443 ssl;" in device
    locations = re.findall(r"location (.*?) \{\n(.*?)\n        \}", device, flags=re.S)
    assert [pattern for pattern, _ in locations] == [
        "~ ^/v1/fleet/(register-node|unregister-node)$",
        "~ ^/v1/fleet/[a-z0-9-]+$",
        "/",
    ]
    enrolment, fleet, rest = (body for _, body in locations)
    assert "return 403" in enrolment and "proxy_pass" not in enrolment
    assert "limit_except POST { deny all; }" in fleet
    assert "proxy_pass https://stamen_superlink$uri;" in fleet
    assert "return 403" in rest and "proxy_pass" not in rest
    assert "server 127.0.0.1:9092;" in text
    # the SuperLink is verified against the CA; the listener serves its certificate
    assert f'proxy_ssl_trusted_certificate "{certs.ca_certificate}";' in text
    assert "proxy_ssl_verify on;" in text and "proxy_ssl_name localhost;" in text
    assert f'ssl_certificate "{certs.superlink_certificate}";' in text
    assert f'ssl_certificate_key "{certs.superlink_key}";' in text
    # nginx's own files stay in the proxy's folder
    assert f'pid "{paths.pid}";' in text and str(paths.error_log) in text
    assert all(
        line.split()[1].startswith(f'"{paths.folder}/temp/')
        for line in text.splitlines()
        if "_temp_path" in line
    )
    assert paths.command("nginx") == ["nginx", "-p", str(paths.folder), "-c", "nginx.conf"]
    assert paths.stop_command("nginx")[-2:] == ["-s", "quit"]


def test_the_operator_facing_listener_forwards_the_control_api_to_its_networks(certs, tmp_path):
    paths = _write(
        certs,
        tmp_path,
        "[::]:9443",
        operator_address="10.8.0.1:9093",
        operator_allow=["10.8.0.0/24", "192.168.1.7"],
    )
    device, operator = _servers(paths.config.read_text())
    assert "listen [::]:9443 ssl;" in device
    assert "listen 10.8.0.1:9093 ssl;" in operator
    assert re.search(
        r"allow 10\.8\.0\.0/24;\n\s+allow 192\.168\.1\.7/32;\n\s+deny all;", operator
    ), operator
    assert "location ~ ^/v1/control/[a-z0-9-]+$ {" in operator
    assert "/v1/fleet/" not in operator and "/v1/control/" not in device


def test_nginx_accepts_the_configuration(certs, tmp_path, nginx):
    paths = _write(
        certs,
        tmp_path,
        "127.0.0.1:9443",
        operator_address="127.0.0.1:9093",
        operator_allow=["127.0.0.1"],
    )
    checked = subprocess.run(
        [*paths.command(nginx), "-t"], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stderr
    assert "syntax is ok" in checked.stderr and "test is successful" in checked.stderr


def test_every_bad_option_is_named_in_one_error(certs, tmp_path):
    with pytest.raises(ConfigError) as raised:
        write_proxy_config(
            tmp_path / "proxy",
            certs=tmp_path / "no-certs",
            superlink="127.0.0.1:9092",
            device_address="127.0.0.1:9092",  # the SuperLink's own address
            operator_allow=["10.0.0.0/33"],
            max_body_mb=0,
        )
    message = str(raised.value)
    for part in [
        "a listener on the SuperLink's own address '127.0.0.1:9092'",
        "--operator-allow: given without --operator-address",
        "--operator-allow '10.0.0.0/33': not an IP address or network",
        "--max-body-mb 0: must be at least 1",
        f"{tmp_path / 'no-certs' / 'ca.crt'}: missing",
        f"{tmp_path / 'no-certs' / 'superlink.key'}: missing",
    ]:
        assert part in message, message
    assert not (tmp_path / "proxy").exists()  # nothing written


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"device_address": "9443"}, "--device-address '9443': expected host:port"),
        ({"device_address": "::1:9443"}, "--device-address '::1:9443': expected host:port"),
        ({"device_address": "host:99999"}, "--device-address 'host:99999'"),
        ({"device_address": "a$b:9443"}, "not a host name or IP address"),
        ({"operator_address": "127.0.0.1:9093"}, "at least one source network is required"),
        ({"superlink": "10.0.0.2:9092"}, "--superlink-name: needed for the SuperLink at 10.0.0.2"),
        ({"superlink_name": "a b"}, "--superlink-name 'a b': not a DNS name"),
        ({"device_address": "0.0.0.0:9092"}, "a listener on the SuperLink's own address"),
    ],
)
def test_a_bad_option_is_named(certs, tmp_path, options, named):
    given = {"superlink": "127.0.0.1:9092", "device_address": "0.0.0.0:9443", **options}
    with pytest.raises(ConfigError, match=re.escape(named)):
        write_proxy_config(tmp_path / "proxy", certs=certs.folder, **given)


def test_an_existing_configuration_is_replaced_only_with_force(certs, tmp_path):
    options = {"certs": certs.folder, "superlink": "127.0.0.1:9092"}
    write_proxy_config(tmp_path, device_address="0.0.0.0:9443", **options)
    with pytest.raises(ConfigError, match=r"nginx\.conf: exists \(--force replaces it\)"):
        write_proxy_config(tmp_path, device_address="0.0.0.0:9444", **options)
    assert "listen 0.0.0.0:9443 ssl;" in (tmp_path / "nginx.conf").read_text()
    paths = write_proxy_config(tmp_path, device_address="0.0.0.0:9444", force=True, **options)
    assert "listen 0.0.0.0:9444 ssl;" in paths.config.read_text()


def test_parse_address():
    assert parse_address("[::1]:9443", what="x") == ("::1", 9443)
    assert parse_address("proxy.example:443", what="x") == ("proxy.example", 443)
    with pytest.raises(ConfigError, match="--flag '0.0.0.0:0'"):
        parse_address("0.0.0.0:0", what="--flag")


def test_flowers_paths_are_the_ones_the_proxy_sorts_by():
    """Flower 1.42's Fleet routes are all ``/v1/fleet/<name>`` (what the device-facing
    listener forwards), its enrolment routes among them, and its Control routes all
    ``/v1/control/<name>``; a SuperNode's client calls Fleet paths only, never the Fleet
    enrolment when it has an authentication key (``fleet_http_connection``)."""
    from flwr.superlink.routers.control.router import router as control
    from flwr.superlink.routers.fleet.router import router as fleet

    fleet_paths = {route.path for route in fleet.routes}  # type: ignore[attr-defined]
    control_paths = {route.path for route in control.routes}  # type: ignore[attr-defined]
    name = re.compile(r"[a-z0-9-]+")
    assert all(
        p.startswith(FLEET_PREFIX) and name.fullmatch(p[len(FLEET_PREFIX) :]) for p in fleet_paths
    )
    assert set(ENROLMENT_PATHS) <= fleet_paths
    assert all(
        p.startswith(CONTROL_PREFIX) and name.fullmatch(p[len(CONTROL_PREFIX) :])
        for p in control_paths
    )
    assert "/v1/control/register-node" in control_paths
    assert "/v1/control/list-runs" in control_paths
    spec = importlib.util.find_spec("flwr.supernode.fleet_http_client")
    assert spec is not None and spec.origin is not None
    source = Path(spec.origin).read_text()
    called = set(re.findall(r'path="(/v1/[^"]+)"', source))
    assert called and called <= fleet_paths, called - fleet_paths


def test_the_command_writes_it_and_prints_how_to_run_it(certs, tmp_path):
    command = ["deploy", "proxy-config", str(tmp_path / "proxy"), "--certs", str(certs.folder)]
    command += ["--superlink", "127.0.0.1:9092", "--device-address", "0.0.0.0:9443"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, (result.output, result.exception)
    folder = (tmp_path / "proxy").resolve()
    assert f"start: nginx -p {folder} -c nginx.conf" in result.output
    assert f"stop:  nginx -p {folder} -c nginx.conf -s quit" in result.output
    assert "https://0.0.0.0:9443  /v1/fleet/ only" in result.output
    refused = CliRunner().invoke(app, command)  # the same again
    assert isinstance(refused.exception, ConfigError), refused.output
    assert "exists (--force replaces it)" in str(refused.exception)


def test_nginx_closes_idle_superlink_connections_before_the_superlink_does(certs, tmp_path):
    """Flower 1.42's SuperLink serves with uvicorn, which closes a connection idle for its
    ``timeout_keep_alive``: nginx must drop an idle one sooner, or it may send a request on
    a connection being closed (answered 502, a SuperNode's retry after a pause)."""
    import inspect

    import uvicorn

    superlink_idle_s = inspect.signature(uvicorn.Config).parameters["timeout_keep_alive"].default
    assert 0 < UPSTREAM_IDLE_S < superlink_idle_s
    upstream = re.search(
        r"upstream stamen_superlink \{(.*?)\}",
        _write(certs, tmp_path, "0.0.0.0:9443").config.read_text(),
        flags=re.S,
    )
    assert upstream is not None and f"keepalive_timeout {UPSTREAM_IDLE_S}s;" in upstream.group(1)
