"""``stamen device``: try the embedded device library from a shell.

Every command takes the device folder; the store key lives in a key file OUTSIDE that
folder (``--key-file``, by default ``<folder>.key`` beside it), created owner-only by
``init`` (standing in for the app's keystore).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from stamen.errors import DataError, DecryptionError

__all__ = [
    "apply",
    "device_app",
    "export",
    "forget",
    "import_events",
    "init",
    "recommend",
    "record",
]

device_app = typer.Typer(
    name="device",
    help="An embedded Stamen device: record events, apply signed releases, recommend.",
    no_args_is_help=True,
)

_KEY_BYTES = 32
_BATCH = 500

Folder = Annotated[Path, typer.Argument(help="the device folder")]
KeyFile = Annotated[
    Path | None,
    typer.Option(help="the store key file, outside the device folder [default: <folder>.key]"),
]


def _key_path(folder: Path, key_file: Path | None) -> Path:
    path = key_file if key_file is not None else folder.parent / f"{folder.name}.key"
    if path.resolve().is_relative_to(folder.resolve()):
        raise DataError(f"{path}: the key file must live outside the device folder {folder}")
    return path


def _read_key(path: Path) -> bytes:
    if not path.is_file():
        raise DataError(f"{path}: no key file; run `stamen device init` first")
    key = path.read_bytes()
    if len(key) != _KEY_BYTES:
        raise DataError(f"{path}: {len(key)} bytes; a store key is {_KEY_BYTES}")
    return key


def _open(folder: Path, key_file: Path | None) -> Any:
    from stamen.client.device.device import Device  # torch loads only for device commands
    from stamen.client.device.folder import MARKER_FILE

    if not (folder / "device.db").is_file() and not (folder / MARKER_FILE).is_file():
        raise DataError(f"{folder}: no device here; run `stamen device init {folder}` first")
    path = _key_path(folder, key_file)
    try:
        return Device.open(folder, key=_read_key(path))
    except DecryptionError as error:  # name the key file too: it is the likely culprit
        raise DecryptionError(f"{error} (key file {path})") from None


@device_app.command()
def init(
    folder: Annotated[Path, typer.Argument(help="the device's own folder (created)")],
    release_key: Annotated[
        Path, typer.Option(help="the publisher's raw Ed25519 public key (release.pub)")
    ],
    key_file: KeyFile = None,
) -> None:
    """Create a device pinned to a publisher's release key; make (or take) its store key."""
    from stamen.client.device.device import Device
    from stamen.privacy import generate_key

    path = _key_path(folder, key_file)
    if path.exists():
        key = _read_key(path)
        note = f"took the key in {path}"
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = generate_key()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key)
        note = f"wrote a new key to {path} (owner-only)"
    public = release_key.read_bytes() if release_key.is_file() else b""
    if len(public) != _KEY_BYTES:
        raise DataError(f"{release_key}: not a raw 32-byte Ed25519 public key")
    Device.open(folder, key=key, release_key=public).close()
    Console().print(f"device in {folder}; {note}; pinned release key {public.hex()[:16]}…")


@device_app.command()
def record(
    folder: Folder,
    item: Annotated[str, typer.Argument(help="the app's item id")],
    kind: Annotated[str, typer.Argument(help="view, click, play, rating, skip, …")],
    value: Annotated[float, typer.Option(help="rating or watch fraction")] = 1.0,
    at: Annotated[float | None, typer.Option(help="seconds since the epoch [default: now]")] = None,
    key_file: KeyFile = None,
) -> None:
    """Record one event."""
    with _open(folder, key_file) as device:
        device.record(item, kind, value=value, at=at)
        Console().print(f"recorded {kind} {item}; {len(device.history())} events on the device")


@device_app.command(name="import")
def import_events(
    folder: Folder,
    events: Annotated[Path, typer.Argument(help="u.data, ratings.dat/.csv or user_artists.dat")],
    user: Annotated[int | None, typer.Option(help="the person's user id in the file")] = None,
    format: Annotated[
        str | None, typer.Option("--format", help="layout, if the file name does not say")
    ] = None,
    key_file: KeyFile = None,
) -> None:
    """Seed a device with one person's events from a file of the loaders' formats."""
    from stamen.simulation.cli.event_files import read_events

    rows = read_events(events, layout=format, user=user)
    with _open(folder, key_file) as device, Progress(transient=True) as progress:
        task = progress.add_task("importing events", total=len(rows))
        for start in range(0, len(rows), _BATCH):
            device.record_many(rows[start : start + _BATCH])
            progress.advance(task, len(rows[start : start + _BATCH]))
    Console().print(f"imported {len(rows)} events from {events}")


@device_app.command()
def apply(
    folder: Folder,
    bundle: Annotated[Path, typer.Argument(help="a signed release file (release-NNNNNN.stamen)")],
    key_file: KeyFile = None,
) -> None:
    """Verify and install a signed release."""
    with _open(folder, key_file) as device:
        info = device.apply_release(bundle)
    Console().print(
        f"installed release {info.number} ({info.model}, {info.items} items"
        f"{', int8 table' if info.quantized else ''})"
    )


@device_app.command()
def recommend(
    folder: Folder,
    k: Annotated[int, typer.Option("--k", min=1, help="how many")] = 10,
    key_file: KeyFile = None,
) -> None:
    """Recommendations computed on the device, with their reasons."""
    with _open(folder, key_file) as device:
        picks = device.recommend(k)
        release = device.release
        catalog = None if device._serving is None else device._serving.bundle.catalog
    console = Console()
    if release is None:
        console.print("no release installed: nothing to recommend (`stamen device apply`)")
        return
    table = Table(title=f"recommendations (release {release.number})")
    for column in ("#", "title", "item", "score", "why", "source"):
        table.add_column(column, justify="right" if column in ("#", "score") else "left")
    for rank, pick in enumerate(picks, start=1):
        index = int(catalog.index_of([pick.item])[0]) if catalog is not None else -1
        title = catalog.title(index) if catalog is not None and index >= 0 else pick.item
        table.add_row(str(rank), title, pick.item, f"{pick.score:.3f}", pick.reason, pick.source)
    console.print(table)


@device_app.command()
def export(
    folder: Folder,
    output: Annotated[Path | None, typer.Option(help="write here [default: print]")] = None,
    key_file: KeyFile = None,
) -> None:
    """Everything the device stores about the person, as JSON."""
    with _open(folder, key_file) as device:
        data = device.export(output)
    if output is None:
        typer.echo(json.dumps(data, indent=1))
    else:
        Console().print(f"wrote {len(data['events'])} events and the state to {output}")


@device_app.command()
def forget(
    folder: Folder,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask")] = False,
    key_file: KeyFile = None,
) -> None:
    """Erase everything the device stored (the key file is left to the app's keystore)."""
    if not yes:
        typer.confirm(f"erase everything in {folder}?", abort=True)
    device = _open(folder, key_file)
    device.forget()
    Console().print(f"erased; {folder} is empty")
