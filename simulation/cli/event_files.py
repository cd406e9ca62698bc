"""Reading one person's events from the interaction files the loaders read, to seed a
device (``stamen device import``).

Formats, told apart by file name (or chosen): MovieLens ``u.data`` (tab-separated user,
item, rating, timestamp), ``ratings.dat`` (``::``), ``ratings.csv`` (with header), and
HetRec Last.fm ``user_artists.dat`` (user, artist, play count; no times). Every field is
checked as the loaders check it; a bad line raises ``DataFormatError`` naming the file,
line and field. A file holding several people needs ``user`` to pick one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from stamen.errors import DataError, DataFormatError
from stamen.simulation.datasets.lastfm import _USER_ARTISTS
from stamen.simulation.datasets.movielens import _RATINGS_CSV, _RATINGS_DAT, _U_DATA
from stamen.simulation.datasets.parsing import TableFormat, require_file, text_lines

__all__ = ["EVENT_FILES", "EventFile", "read_events"]


@dataclass(frozen=True)
class EventFile:
    """A file layout, its text encoding, and the event kind its rows become."""

    table: TableFormat
    encoding: str
    kind: str


#: Known layouts by file name.
EVENT_FILES: dict[str, EventFile] = {
    "u.data": EventFile(_U_DATA, "utf-8", "rating"),
    "ratings.dat": EventFile(_RATINGS_DAT, "latin-1", "rating"),
    "ratings.csv": EventFile(_RATINGS_CSV, "utf-8", "rating"),
    "user_artists.dat": EventFile(_USER_ARTISTS, "utf-8", "play"),
}


def _rows(path: Path, spec: EventFile) -> Iterator[tuple[int, list[int | float]]]:
    table = spec.table
    skip = 0 if table.header is None else 1
    for line, text in text_lines(path, spec.encoding, skip=skip):
        if not text.strip():
            continue
        fields = text.rstrip("\r\n").split(table.sep)
        if len(fields) != len(table.columns):
            raise DataFormatError(
                f"{len(fields)} fields; expected {table.describe()}", path=path, line=line
            )
        values = []
        for column, field in zip(table.columns, fields, strict=True):
            try:
                value = column.parse(field)
            except ValueError as error:
                raise DataFormatError(str(error), path=path, line=line, field=column.name) from None
            if (problem := column.problem(value)) is not None:
                raise DataFormatError(problem, path=path, line=line, field=column.name)
            values.append(value)
        yield line, values


def read_events(
    path: str | Path, *, layout: str | None = None, user: int | None = None
) -> list[dict]:
    """The events of one person in ``path``, oldest first, as ``record_many`` takes them.

    Args:
        path: the file.
        layout: a key of ``EVENT_FILES``; ``None`` picks it by the file name.
        user: the person's user id in the file (needed when it holds several).

    Raises:
        DataFormatError: a malformed line (file, line and field named).
        DataError: unknown layout, no rows for ``user``, or several users and no ``user``.
    """
    path = require_file(Path(path), "an interaction file")
    name = layout or path.name
    if name not in EVENT_FILES:
        raise DataError(
            f"{path}: unknown layout {name!r}; name one of {sorted(EVENT_FILES)} with --format"
        )
    spec = EVENT_FILES[name]
    table = spec.table
    events, users = [], set()
    for line, values in _rows(path, spec):
        users.add(int(values[table.user]))
        if user is not None and int(values[table.user]) != user:
            continue
        at = 0.0 if table.timestamp is None else float(values[table.timestamp])
        events.append(
            {
                "item": str(int(values[table.item])),
                "kind": spec.kind,
                "value": float(values[table.value]),
                "at": at,
                "line": line,
            }
        )
    if user is None and len(users) > 1:
        raise DataError(f"{path}: holds {len(users)} users; choose one with --user")
    if not events:
        raise DataError(f"{path}: no events" + ("" if user is None else f" for user {user}"))
    events.sort(key=lambda e: (e["at"], e.pop("line")))
    return events
