"""``stamen device``: try the embedded device library from a shell.

Every command takes the device folder; the store key lives in a key file OUTSIDE that
folder (``--key-file``, by default ``<folder>.key`` beside it), created owner-only by
``init`` (standing in for the app's keystore). With ``--json`` a command prints one JSON
object on stdout instead of its text, and an error as ``{"error": {"type", "message"}}``
(exit status 2 either way).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from stamen.errors import DataError, DecryptionError, StamenError

__all__ = [
    "apply",
    "device_app",
    "export",
    "forget",
    "import_events",
    "init",
    "recommend",
    "record",
    "update",
]

device_app = typer.Typer(
    name="device",
    help="An embedded Stamen device: record events, apply signed releases, recommend.",
    no_args_is_help=True,
)

_KEY_BYTES = 32

Folder = Annotated[Path, typer.Argument(help="the device folder")]
KeyFile = Annotated[
    Path | None,
    typer.Option(help="the store key file, outside the device folder [default: <folder>.key]"),
]
Json = Annotated[bool, typer.Option("--json", help="print one JSON object instead of text")]


@contextmanager
def _reported(as_json: bool) -> Iterator[None]:
    """With ``--json``, a Stamen error becomes one JSON object on stdout (exit 2);
    without, it reaches ``stamen``'s ``error:`` line."""
    try:
        yield
    except StamenError as error:
        if not as_json:
            raise
        typer.echo(json.dumps({"error": {"type": type(error).__name__, "message": str(error)}}))
        raise typer.Exit(2) from None


def _say(as_json: bool, data: dict[str, Any], text: str) -> None:
    if as_json:
        typer.echo(json.dumps(data))
    else:
        Console().print(text)


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
    as_json: Json = False,
) -> None:
    """Create a device pinned to a publisher's release key; make (or take) its store key."""
    with _reported(as_json):
        _init(folder, release_key, key_file, as_json)


def _init(folder: Path, release_key: Path, key_file: Path | None, as_json: bool) -> None:
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
    _say(
        as_json,
        {
            "folder": str(folder),
            "key_file": str(path),
            "new_key": "new" in note,
            "release_key": public.hex(),
        },
        f"device in {folder}; {note}; pinned release key {public.hex()[:16]}…",
    )


@device_app.command()
def record(
    folder: Folder,
    item: Annotated[str, typer.Argument(help="the app's item id")],
    kind: Annotated[str, typer.Argument(help="view, click, play, rating, skip, …")],
    value: Annotated[float, typer.Option(help="rating or watch fraction")] = 1.0,
    at: Annotated[float | None, typer.Option(help="seconds since the epoch [default: now]")] = None,
    event_id: Annotated[
        str | None, typer.Option("--id", help="the event's own id: a retry stores nothing")
    ] = None,
    key_file: KeyFile = None,
    as_json: Json = False,
) -> None:
    """Record one event."""
    with _reported(as_json), _open(folder, key_file) as device:
        event = device.record(item, kind, value=value, at=at, event_id=event_id)
        count = device.event_count()
    _say(
        as_json,
        {"event": event.to_json(), "events": count},
        f"recorded {kind} {item}; {count} events on the device",
    )


@device_app.command(name="import")
def import_events(
    folder: Folder,
    events: Annotated[
        Path,
        typer.Argument(
            help="an events file (.csv or .jsonl: item, kind, value, at, id columns) or a "
            "data set's u.data, ratings.dat, ratings.csv or user_artists.dat"
        ),
    ],
    column: Annotated[
        list[str] | None,
        typer.Option(
            "--column", help="FIELD=NAME: the file's column for an event field (repeatable)"
        ),
    ] = None,
    kind: Annotated[
        str | None, typer.Option(help="every row's kind, when the file has no kind column")
    ] = None,
    user: Annotated[
        int | None, typer.Option(help="the person's user id in a data set's file")
    ] = None,
    format: Annotated[
        str | None,
        typer.Option(
            "--format", help="csv, jsonl or a data set's layout, if the name does not say"
        ),
    ] = None,
    key_file: KeyFile = None,
    as_json: Json = False,
) -> None:
    """Record one person's events from a file, streamed, in one transaction: every event
    or, on an error (its file, line and column named), none."""
    from stamen.simulation.cli.event_files import EVENT_FILES, PresetFile

    with _reported(as_json):
        preset = (format or events.name) in EVENT_FILES
        if preset and (column or kind):
            raise DataError(f"{events}: --column and --kind describe a .csv or .jsonl events file")
        if not preset and user is not None:
            raise DataError(f"{events}: --user picks a person in a data set's file only")
        columns = dict(_pair(text) for text in column or [])
        source: Any = PresetFile(events, layout=format, user=user) if preset else events
        options = {} if preset else {"format": format, "columns": columns, "kind": kind}
        with _open(folder, key_file) as device, _progress(as_json) as progress:
            task = progress.add_task("importing", total=None)

            def advance(stored: int, done: int, size: int) -> None:
                progress.update(task, completed=done, total=size, description=f"{stored} events")

            report = device.import_events(source, progress=advance, **options)
            count = device.event_count()
    note = (
        f"; columns not read: {', '.join(report.ignored_columns)}" if report.ignored_columns else ""
    )
    _say(
        as_json,
        {
            "file": str(events),
            "stored": report.stored,
            "read": report.read,
            "ignored_columns": list(report.ignored_columns),
            "events": count,
        },
        f"imported {report.stored} events from {events} ({report.read} rows read; "
        f"{count} events on the device){note}",
    )


def _pair(text: str) -> tuple[str, str]:
    field, sep, name = text.partition("=")
    if not sep or not field or not name:
        raise DataError(f"--column {text!r}: expected FIELD=NAME, e.g. item=movie_id")
    return field, name


def _progress(as_json: bool) -> Progress:
    """A progress bar on stderr (by bytes of the file), silent under ``--json``."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=as_json,
    )


@device_app.command()
def apply(
    folder: Folder,
    bundle: Annotated[Path, typer.Argument(help="a signed release file (release-NNNNNN.stamen)")],
    key_file: KeyFile = None,
    as_json: Json = False,
) -> None:
    """Verify and install a signed release."""
    with _reported(as_json), _open(folder, key_file) as device:
        info = device.apply_release(bundle)
    _say(
        as_json,
        {"release": dict(info.__dict__)},
        f"installed release {info.number} ({info.model}, {info.items} items"
        f"{', int8 table' if info.quantized else ''})",
    )


@device_app.command()
def update(
    folder: Folder,
    source: Annotated[
        str,
        typer.Argument(
            help="a releases folder, or its http(s):// URL on a static web server "
            "(its `latest` names the newest release)"
        ),
    ],
    ca_file: Annotated[
        Path | None, typer.Option(help="the CA certificate of an HTTPS server with its own CA")
    ] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="seconds per request")] = 30.0,
    key_file: KeyFile = None,
    as_json: Json = False,
) -> None:
    """Install the newest signed release of a folder or URL if it is newer than the
    device's (a no-op otherwise)."""
    import ssl

    from stamen.client.device.fetch import is_url

    with _reported(as_json):
        if not is_url(source) and not Path(source).is_dir():
            raise DataError(f"{source}: neither a releases folder nor an http(s):// URL")
        context = None if ca_file is None else ssl.create_default_context(cafile=str(ca_file))
        with _open(folder, key_file) as device:
            before = device.release
            info = device.apply_if_newer(source, timeout=timeout, context=context)
    if info is None:
        number = None if before is None else before.number
        _say(
            as_json,
            {"updated": False, "release": number},
            f"release {number} is the newest: nothing to install",
        )
    else:
        _say(
            as_json,
            {"updated": True, "release": dict(info.__dict__)},
            f"installed release {info.number} ({info.model}, {info.items} items)",
        )


@device_app.command()
def recommend(
    folder: Folder,
    k: Annotated[int, typer.Option("--k", min=1, help="how many")] = 10,
    key_file: KeyFile = None,
    as_json: Json = False,
) -> None:
    """Recommendations computed on the device, with their reasons."""
    with _reported(as_json), _open(folder, key_file) as device:
        picks = device.recommend(k)
        release = device.release
        catalog = None if device._serving is None else device._serving.bundle.catalog
    rows = []
    for rank, pick in enumerate(picks, start=1):
        index = int(catalog.index_of([pick.item])[0]) if catalog is not None else -1
        title = catalog.title(index) if catalog is not None and index >= 0 else pick.item
        rows.append(
            {
                "rank": rank,
                "item": pick.item,
                "title": title,
                "score": pick.score,
                "reason": pick.reason,
                "source": pick.source,
            }
        )
    if as_json:
        typer.echo(
            json.dumps({"release": None if release is None else release.number, "picks": rows})
        )
        return
    console = Console()
    if release is None:
        console.print("no release installed: nothing to recommend (`stamen device apply`)")
        return
    table = Table(title=f"recommendations (release {release.number})")
    for column in ("#", "title", "item", "score", "why", "source"):
        table.add_column(column, justify="right" if column in ("#", "score") else "left")
    for row in rows:
        table.add_row(
            str(row["rank"]),
            row["title"],
            row["item"],
            f"{row['score']:.3f}",
            row["reason"],
            row["source"],
        )
    console.print(table)


@device_app.command()
def export(
    folder: Folder,
    output: Annotated[Path | None, typer.Option(help="write here [default: print]")] = None,
    key_file: KeyFile = None,
    as_json: Json = False,
) -> None:
    """Everything the device stores about the person, as JSON."""
    with _reported(as_json), _open(folder, key_file) as device:
        data = device.export(output)
    if output is None:
        typer.echo(json.dumps(data, indent=None if as_json else 1))
    else:
        _say(
            as_json,
            {"output": str(output), "events": len(data["events"])},
            f"wrote {len(data['events'])} events and the state to {output}",
        )


@device_app.command()
def forget(
    folder: Folder,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask")] = False,
    key_file: KeyFile = None,
    as_json: Json = False,
) -> None:
    """Erase everything the device stored (the key file is left to the app's keystore)."""
    with _reported(as_json):
        if not yes:
            if as_json:
                raise DataError("--json cannot ask for confirmation: add --yes")
            typer.confirm(f"erase everything in {folder}?", abort=True)
        _open(folder, key_file).forget()
    _say(as_json, {"forgotten": str(folder)}, f"erased what Stamen stored in {folder}")
