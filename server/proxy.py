"""A closed control plane: nginx in front of the SuperLink, devices reaching the Fleet API only.

Flower 1.42 serves three APIs on the SuperLink's one port (``--host``/``--port``): the Fleet
API (``/v1/fleet/…``, what SuperNodes call), the Control API (``/v1/control/…``, the ``flwr``
CLI: runs, and enrolment with ``flwr supernode register``) and the Runtime API
(``/v1/runtime/…``, the ServerApp and SuperExec). Nothing in Flower 1.42 turns the Control
API off or moves it to another port (``--control-api-address`` is deprecated and ignored),
and its only account authentication is OIDC from Flower's enterprise package (``flwr.ee``):
with ``FLWR_OIDC_ENABLED=1`` the open-source SuperLink exits ("OIDC account authentication is
unavailable in this Flower distribution"). So anyone who reaches the port and holds the
public ``ca.crt`` can enrol a node and list runs. :func:`write_proxy_config` writes an nginx
configuration that separates the two audiences; the SuperLink itself listens on
127.0.0.1 only:

- the **device-facing** listener (TLS with the SuperLink's certificate, so devices keep
  their ``ca.crt``) forwards ``POST /v1/fleet/<name>`` to the SuperLink, except the Fleet
  API's own enrolment (``register-node``, ``unregister-node``: a SuperNode started with
  ``--auth-supernode-private-key`` never calls them; they are how a keyless node enrols
  itself when the SuperLink runs without ``--enable-supernode-auth``), and answers 403 to
  everything else: the Control and Runtime APIs, Flower's ``/docs`` and ``/health``;
- an optional **operator-facing** listener forwards ``POST /v1/control/<name>`` only, to the
  source networks named in ``operator_allow`` (nginx ``allow``/``deny all``), for an
  operator who is not on the SuperLink's machine; on that machine the ``flwr`` CLI reaches
  the SuperLink's own 127.0.0.1 port.

nginx adds no parallel requests of its own: each device request is one request to the
SuperLink, over a connection nginx keeps open (``keepalive``) and closes after
:data:`UPSTREAM_IDLE_S` idle seconds, before the SuperLink would (a request nginx sent on a
connection the SuperLink was closing would be answered 502, which a SuperNode retries).
nginx verifies the SuperLink's certificate against the CA (``proxy_ssl_verify``), passes
request and response bodies through without buffering them to disk (no temporary files:
its workers may run as another user than its master), and keeps its pid file, logs and
temporary folders in the proxy's folder: ``nginx -p FOLDER -c nginx.conf`` runs it as the
operator's own process (no system-wide configuration, no root unless a listener's port is
below 1024); :meth:`ProxyPaths.command` and :meth:`ProxyPaths.stop_command` are those
commands.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stamen.errors import ConfigError

__all__ = [
    "CONFIG_FILE",
    "CONTROL_PREFIX",
    "ENROLMENT_PATHS",
    "FLEET_PREFIX",
    "NGINX_INSTALL",
    "UPSTREAM_IDLE_S",
    "UPSTREAM_KEEPALIVE",
    "ProxyPaths",
    "find_nginx",
    "parse_address",
    "write_proxy_config",
]

#: The path prefixes of Flower 1.42's SuperLink APIs (``flwr.superlink.routers``).
FLEET_PREFIX = "/v1/fleet/"
CONTROL_PREFIX = "/v1/control/"
#: Fleet API paths by which a node enrols or removes itself: refused to devices.
ENROLMENT_PATHS = ("/v1/fleet/register-node", "/v1/fleet/unregister-node")
#: The configuration's file name inside the proxy's folder.
CONFIG_FILE = "nginx.conf"
#: Idle connections nginx keeps open to the SuperLink (each is one uvicorn connection).
UPSTREAM_KEEPALIVE = 16
#: Seconds nginx keeps an idle connection to the SuperLink: below the 5 s after which
#: Flower 1.42's SuperLink (uvicorn's ``timeout_keep_alive`` default) closes it.
UPSTREAM_IDLE_S = 4
#: How to install nginx on Debian (what ``make nginx`` runs).
NGINX_INSTALL = "apt-get install -y nginx (Debian), or `make nginx`"

_TEMP = ("body", "proxy", "fastcgi", "uwsgi", "scgi")
#: Characters nginx would read as syntax or variables inside a quoted path.
_UNSAFE = set('"$\\{};\n\r')
_LOOPBACK_NAME = "localhost"


@dataclass(frozen=True)
class ProxyPaths:
    """What :func:`write_proxy_config` wrote, and where nginx will keep its files."""

    folder: Path
    config: Path
    pid: Path
    error_log: Path
    access_log: Path
    device_address: str
    operator_address: str | None

    def command(self, nginx: str = "nginx", *, foreground: bool = False) -> list[str]:
        """The command that starts the proxy (``foreground``: it does not detach, as under
        a supervisor or in a test)."""
        command = [nginx, "-p", str(self.folder), "-c", CONFIG_FILE]
        return command + (["-g", "daemon off;"] if foreground else [])

    def stop_command(self, nginx: str = "nginx") -> list[str]:
        """The command that stops a detached proxy gracefully (``-s quit``)."""
        return [nginx, "-p", str(self.folder), "-c", CONFIG_FILE, "-s", "quit"]


def find_nginx() -> str:
    """The ``nginx`` executable: on ``PATH``, or where Debian installs it (``/usr/sbin``,
    which is not on an unprivileged user's ``PATH``).

    Raises:
        ConfigError: nginx is not installed.
    """
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    found = shutil.which("nginx", path=search)
    if found is None:
        raise ConfigError(f"nginx: not installed (not on PATH nor in /usr/sbin): {NGINX_INSTALL}")
    return found


def parse_address(address: str, *, what: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9443`` for IPv6) as a host and a port; ``what`` names the
    option in the error.

    Raises:
        ConfigError: not of that form, or the port is not 1–65535.
    """
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an IPv6 address without brackets: ambiguous
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what} {address!r}: expected host:port, e.g. 0.0.0.0:9443 or [::]:9443")
    if set(host) & (_UNSAFE | {" ", "/"}):
        raise ConfigError(f"{what} {address!r}: not a host name or IP address")
    return host, int(port)


def write_proxy_config(
    folder: str | Path,
    *,
    certs: str | Path,
    superlink: str,
    device_address: str,
    operator_address: str | None = None,
    operator_allow: Sequence[str] = (),
    superlink_name: str | None = None,
    max_body_mb: int = 256,
    force: bool = False,
) -> ProxyPaths:
    """Write ``folder/nginx.conf`` (module docstring) and the folders nginx writes to.

    Args:
        folder: the proxy's folder (created): its configuration, pid file, logs and
            temporary folders.
        certs: the ``stamen certs make`` folder: ``ca.crt`` (to verify the SuperLink),
            ``superlink.crt`` and ``superlink.key`` (what the listeners serve).
        superlink: the SuperLink's ``host:port`` (its ``--host``/``--port``; 127.0.0.1,
            so that only this machine reaches its Control API directly).
        device_address: ``host:port`` the device-facing listener binds.
        operator_address: ``host:port`` of an operator-facing listener (none: the operator
            uses the SuperLink's own address, on its machine).
        operator_allow: source addresses or networks (``10.8.0.0/24``) allowed on the
            operator-facing listener; required with it, every other source is refused.
        superlink_name: the name nginx checks in the SuperLink's certificate; by default
            the SuperLink's host name, or ``localhost`` for a loopback address (every
            ``stamen certs make`` certificate carries it). nginx matches DNS names only.
        max_body_mb: the largest request body a listener accepts, in MiB.
        force: replace an existing configuration.

    Raises:
        ConfigError: a bad address, network or size, a listener on the SuperLink's own
            address, a missing certificate file, a path nginx could not quote, or an
            existing configuration without ``force``.
    """
    root = Path(folder).resolve()
    cert_folder = Path(certs).resolve()
    problems: list[str] = []
    link = _checked(superlink, "--superlink", problems)
    device = _checked(device_address, "--device-address", problems)
    operator = None
    if operator_address is not None:
        operator = _checked(operator_address, "--operator-address", problems)
        if not operator_allow:
            problems.append(
                "--operator-allow: at least one source network is required with "
                "--operator-address (the Control API has no authentication of its own)"
            )
    elif operator_allow:
        problems.append("--operator-allow: given without --operator-address")
    networks = []
    for value in operator_allow:
        try:
            networks.append(str(ipaddress.ip_network(value, strict=False)))
        except ValueError:
            problems.append(f"--operator-allow {value!r}: not an IP address or network")
    if max_body_mb < 1:
        problems.append(f"--max-body-mb {max_body_mb}: must be at least 1")
    listeners = [a for a in (device, operator) if a is not None]
    if link is not None and any(_overlap(a, link) for a in listeners):
        problems.append(f"a listener on the SuperLink's own address {superlink!r}")
    if device is not None and operator is not None and _overlap(device, operator):
        problems.append("--device-address and --operator-address take the same port")
    if superlink_name is not None:
        name = superlink_name
        if not superlink_name or set(superlink_name) & (_UNSAFE | {" ", "/", ":"}):
            problems.append(f"--superlink-name {superlink_name!r}: not a DNS name")
    else:
        name = "" if link is None else _default_name(link[0], problems)
    files = {
        "ca": cert_folder / "ca.crt",
        "certificate": cert_folder / "superlink.crt",
        "key": cert_folder / "superlink.key",
    }
    for path in files.values():
        if not path.is_file():
            problems.append(f"{path}: missing (stamen certs make {cert_folder})")
    for path in [root, *files.values()]:
        if set(str(path)) & _UNSAFE:
            problems.append(f"{path}: a path nginx cannot quote (one of {sorted(_UNSAFE)!r})")
    config = root / CONFIG_FILE
    if config.exists() and not force:
        problems.append(f"{config}: exists (--force replaces it)")
    if problems:
        raise ConfigError("proxy config: " + "; ".join(problems))
    assert device is not None and link is not None
    paths = ProxyPaths(
        folder=root,
        config=config,
        pid=root / "nginx.pid",
        error_log=root / "logs" / "error.log",
        access_log=root / "logs" / "access.log",
        device_address=_listen(device),
        operator_address=None if operator is None else _listen(operator),
    )
    for sub in ("logs", *(f"temp/{t}" for t in _TEMP)):
        (root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    text = _render(
        paths,
        files=files,
        upstream=_listen(link),
        superlink_name=name,
        networks=networks,
        max_body_mb=max_body_mb,
    )
    tmp = config.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(config)
    return paths


def _checked(address: str, what: str, problems: list[str]) -> tuple[str, int] | None:
    """:func:`parse_address`, its error added to ``problems`` (then ``None``)."""
    try:
        return parse_address(address, what=what)
    except ConfigError as error:
        problems.append(str(error))
        return None


def _overlap(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Whether two listeners would take the same port (one of them on every interface)."""
    return a[1] == b[1] and (a[0] == b[0] or bool({a[0], b[0]} & {"0.0.0.0", "::", "*"}))


def _default_name(host: str, problems: list[str]) -> str:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if ip.is_loopback:
        return _LOOPBACK_NAME
    problems.append(
        f"--superlink-name: needed for the SuperLink at {host} (nginx checks a DNS name of "
        "its certificate, not an IP address; stamen certs make --san NAME adds one)"
    )
    return ""


def _listen(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _quoted(path: Path) -> str:
    return f'"{path}"'


def _render(
    paths: ProxyPaths,
    *,
    files: dict[str, Path],
    upstream: str,
    superlink_name: str,
    networks: Sequence[str],
    max_body_mb: int,
) -> str:
    root = paths.folder
    refused = "only the Fleet API is served on this address"
    enrolment = "|".join(p.rsplit("/", 1)[1] for p in ENROLMENT_PATHS)
    lines = [
        "# Written by `stamen deploy proxy-config` (stamen.server.proxy). Start and stop:",
        f"#   {' '.join(paths.command())}",
        f"#   {' '.join(paths.stop_command())}",
        "worker_processes 1;",
        f"pid {_quoted(paths.pid)};",
        f"error_log {_quoted(paths.error_log)} warn;",
        "events { worker_connections 1024; }",
        "http {",
        f"    access_log {_quoted(paths.access_log)};",
        *(f"    {t}_temp_path {_quoted(root / 'temp' / t)};" for t in ("fastcgi", "uwsgi", "scgi")),
        f"    client_body_temp_path {_quoted(root / 'temp' / 'body')};",
        f"    proxy_temp_path {_quoted(root / 'temp' / 'proxy')};",
        "    server_tokens off;",
        "    default_type text/plain;",
        f"    client_max_body_size {max_body_mb}m;",
        "    # bodies stream through: no temporary files, long pulls and streams not held back",
        "    proxy_request_buffering off;",
        "    proxy_buffering off;",
        "    proxy_http_version 1.1;",
        '    proxy_set_header Connection "";',
        "    proxy_set_header X-Forwarded-For $remote_addr;",
        "    proxy_read_timeout 300s;",
        "    proxy_send_timeout 300s;",
        "    # the SuperLink's certificate is checked against the deployment's CA",
        f"    proxy_ssl_trusted_certificate {_quoted(files['ca'])};",
        "    proxy_ssl_verify on;",
        "    proxy_ssl_verify_depth 2;",
        f"    proxy_ssl_name {superlink_name};",
        "    proxy_ssl_session_reuse on;",
        f"    ssl_certificate {_quoted(files['certificate'])};",
        f"    ssl_certificate_key {_quoted(files['key'])};",
        "    ssl_protocols TLSv1.2 TLSv1.3;",
        "    # idle connections to the SuperLink are reused, and closed before the SuperLink's",
        "    # own server closes them (uvicorn: after 5 s idle), so that no request is sent",
        "    # on a connection being closed (nginx would answer it 502, not retrying a POST)",
        "    upstream stamen_superlink {",
        f"        server {upstream};",
        f"        keepalive {UPSTREAM_KEEPALIVE};",
        f"        keepalive_timeout {UPSTREAM_IDLE_S}s;",
        "    }",
        "",
        "    # device-facing: the Fleet API without its enrolment; 403 for everything else",
        "    server {",
        f"        listen {paths.device_address} ssl;",
        f"        location ~ ^/v1/fleet/({enrolment})$ {{",
        '            return 403 "enrolment is the operator\'s: flwr supernode register\\n";',
        "        }",
        "        location ~ ^/v1/fleet/[a-z0-9-]+$ {",
        "            limit_except POST { deny all; }",
        "            proxy_pass https://stamen_superlink$uri;",
        "        }",
        "        location / {",
        f'            return 403 "{refused}\\n";',
        "        }",
        "    }",
    ]
    if paths.operator_address is not None:
        lines += [
            "",
            "    # operator-facing: the Control API only, to the operator's networks",
            "    server {",
            f"        listen {paths.operator_address} ssl;",
            *(f"        allow {network};" for network in networks),
            "        deny all;",
            "        location ~ ^/v1/control/[a-z0-9-]+$ {",
            "            limit_except POST { deny all; }",
            "            proxy_pass https://stamen_superlink$uri;",
            "        }",
            "        location / {",
            '            return 403 "only the Control API is served on this address\\n";',
            "        }",
            "    }",
        ]
    return "\n".join([*lines, "}", ""])
