"""``stamen certs``: TLS certificates and SuperNode keys for a local Flower deployment.

``stamen certs make OUT_DIR`` writes a test CA, a SuperLink certificate it signs (for
localhost, 127.0.0.1, ::1 and every ``--san``), ``--supernodes`` authentication key pairs
and the device registry ``devices.toml`` (node *i*'s key serves device *i*); ``stamen certs
node OUT_DIR NAME [--device-id N]`` adds one more key pair (registered as device N; a
replaced key keeps its device); ``stamen certs check OUT_DIR``
says when the certificates expire (exit 1 within ``--warn-days``, 2 expired or not the
CA's); ``stamen certs renew OUT_DIR`` issues a new SuperLink certificate under the same CA.
See :mod:`stamen.server.certs`.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from stamen.errors import StamenError

if TYPE_CHECKING:
    from stamen.server.certs import CertificatePaths, SupernodeKeyPaths

__all__ = ["certs_app", "check", "make", "node", "renew"]

certs_app = typer.Typer(
    name="certs",
    help="Test TLS certificates and SuperNode keys for a local Flower deployment.",
    no_args_is_help=True,
)

Force = Annotated[bool, typer.Option("--force", help="replace files that already exist")]

_ROLES = {
    "ca.key": "CA private key",
    "ca.crt": "CA certificate (SuperNodes' --root-certificates)",
    "superlink.key": "SuperLink TLS private key",
    "superlink.crt": "SuperLink TLS certificate",
    "devices.toml": "device registry: device id by SuperNode key (run-config key devices)",
}


@certs_app.command()
def make(
    out_dir: Annotated[Path, typer.Argument(help="folder for the files (created)")],
    supernodes: Annotated[
        int, typer.Option(min=0, help="how many SuperNode key pairs (supernode-0, …)")
    ] = 2,
    san: Annotated[
        list[str] | None,
        typer.Option(
            "--san",
            help="extra SuperLink host name or IP, beyond localhost/127.0.0.1/::1 (repeatable)",
        ),
    ] = None,
    days: Annotated[int, typer.Option(min=1, help="days the certificates stay valid")] = 365,
    force: Force = False,
) -> None:
    """Write a CA, a SuperLink certificate it signs, and SuperNode authentication keys."""
    from stamen.server.certs import make_certificates

    try:
        paths = make_certificates(
            out_dir, supernodes=supernodes, sans=san or (), days=days, force=force
        )
    except StamenError as err:
        _fail(err)
    console = Console()
    _summary(console, paths.folder, paths.files())
    console.print(f"SuperLink SANs: {', '.join(paths.sans)}", soft_wrap=True)
    _next_steps(console, paths)


@certs_app.command()
def node(
    out_dir: Annotated[Path, typer.Argument(help="the certificates folder")],
    name: Annotated[str, typer.Argument(help="the key pair's name: NAME.key and NAME.pub")],
    device_id: Annotated[
        int | None,
        typer.Option(
            min=0, help="register the key as this device in devices.toml [default: keep its own]"
        ),
    ] = None,
    force: Force = False,
) -> None:
    """Add one SuperNode authentication key pair to a folder (and to its device registry)."""
    from stamen.server.certs import add_supernode
    from stamen.server.identities import REGISTRY_FILE, DeviceRegistry

    registry = out_dir / REGISTRY_FILE
    try:
        keys = add_supernode(out_dir, name, device_id=device_id, force=force)
        entries = DeviceRegistry.read(registry).entries if registry.is_file() else ()
    except StamenError as err:
        _fail(err)
    console = Console()
    registered = [e.id for e in entries if e.node == name]  # written with the key
    written = [keys.private_key, keys.public_key]
    if registered:
        written.append(registry)
    _summary(console, out_dir, written)
    if registered:
        console.print(f"{name} serves device {registered[0]} ({registry})", highlight=False)
    _node_steps(console, keys)


@certs_app.command()
def check(
    out_dir: Annotated[Path, typer.Argument(help="the certificates folder")],
    warn_days: Annotated[
        float, typer.Option(min=0, help="warn when a certificate expires within this many days")
    ] = 30,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """When the CA and SuperLink certificates expire, and whether the SuperLink's is still
    the CA's: exit 0 valid, 1 one expires within --warn-days, 2 one is expired or not
    issued by the CA (start no SuperLink on it)."""
    import json

    from stamen.server.certs import check_certificates

    try:
        found = check_certificates(out_dir)
    except StamenError as err:
        _fail(err)
    states = [status.state(warn_days) for status in found]
    if as_json:
        rows = [
            {
                "file": str(status.path),
                "subject": status.subject,
                "not_after": status.not_after.isoformat(),
                "days_left": round(status.days_left, 2),
                "state": state,
                "problem": status.problem,
            }
            for status, state in zip(found, states, strict=True)
        ]
        typer.echo(json.dumps({"certificates": rows}))
    else:
        table = Table(title=f"certificates in {out_dir}", title_justify="left")
        for column in ("file", "subject", "expires", "days left", "state"):
            table.add_column(column)
        for status, state in zip(found, states, strict=True):
            shown = state if status.problem is None else f"{state}: {status.problem}"
            table.add_row(
                status.path.name,
                status.subject,
                f"{status.not_after:%Y-%m-%d %H:%M} UTC",
                f"{status.days_left:.1f}",
                shown,
            )
        Console().print(table)
    if {"expired", "invalid"} & set(states):
        raise typer.Exit(code=2)
    if "expiring" in states:
        if not as_json:
            typer.echo(
                "warning: renew before it expires: stamen certs renew (same CA) or, for the "
                "CA itself, stamen certs make --force (every device then needs the new ca.crt)",
                err=True,
            )
        raise typer.Exit(code=1)


@certs_app.command()
def renew(
    out_dir: Annotated[Path, typer.Argument(help="the certificates folder (with ca.key)")],
    days: Annotated[int, typer.Option(min=1, help="days the new certificate stays valid")] = 365,
    san: Annotated[
        list[str] | None,
        typer.Option("--san", help="the new SANs beyond localhost/127.0.0.1/::1 [default: keep]"),
    ] = None,
) -> None:
    """A new SuperLink key and certificate under the same CA (devices keep their ca.crt);
    restart the SuperLink to serve it."""
    from stamen.server.certs import renew_superlink_certificate

    try:
        paths = renew_superlink_certificate(out_dir, days=days, sans=san)
    except StamenError as err:
        _fail(err)
    console = Console()
    _summary(console, paths.folder, [paths.superlink_key, paths.superlink_certificate])
    console.print(f"SuperLink SANs: {', '.join(paths.sans)}", soft_wrap=True)
    _next_steps(console, paths)


def _fail(err: Exception) -> NoReturn:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(code=2)


def _role(path: Path) -> str:
    if path.name in _ROLES:
        return _ROLES[path.name]
    kind = "private key" if path.suffix == ".key" else "public key (flwr supernode register)"
    return f"SuperNode {path.stem} {kind}"


def _summary(console: Console, folder: Path, files: list[Path]) -> None:
    table = Table(title=f"wrote {len(files)} files in {folder}", title_justify="left")
    table.add_column("file")
    table.add_column("mode")
    table.add_column("what")
    for path in files:
        mode = stat.filemode(path.stat().st_mode)
        table.add_row(path.name, mode, _role(path))
    console.print(table)


def _next_steps(console: Console, paths: CertificatePaths) -> None:
    console.print(
        "SuperLink: flower-superlink "
        f"--ssl-ca-certfile {paths.ca_certificate} --ssl-certfile {paths.superlink_certificate} "
        f"--ssl-keyfile {paths.superlink_key} --enable-supernode-auth …",
        soft_wrap=True,
        highlight=False,
    )
    for keys in paths.supernodes:
        _node_steps(console, keys, root_certificates=paths.ca_certificate)


def _node_steps(
    console: Console, keys: SupernodeKeyPaths, *, root_certificates: Path | None = None
) -> None:
    ca = root_certificates if root_certificates is not None else keys.private_key.parent / "ca.crt"
    console.print(
        f"{keys.name}: flwr supernode register {keys.public_key} <superlink-connection>; "
        f"flower-supernode --root-certificates {ca} "
        f"--auth-supernode-private-key {keys.private_key} …",
        soft_wrap=True,
        highlight=False,
    )
