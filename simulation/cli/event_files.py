"""The data sets' interaction files as presets of ``stamen device import``.

Layouts, told apart by file name (or chosen with ``--format``): MovieLens ``u.data``
(tab-separated user, item, rating, timestamp), ``ratings.dat`` (``::``), ``ratings.csv``
(with header), and HetRec Last.fm ``user_artists.dat`` (user, artist, play count; no
times). :class:`PresetFile` reads one person's rows of such a file as a stream, each field
checked as the loaders check it (a bad line raises ``DataFormatError`` naming the file,
line and field), and is an ``EventSource`` that ``Device.import_events`` records in one
transaction. A file holding several people needs ``user`` to pick one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from stamen.errors import DataError, DataFormatError
from stamen.simulation.datasets.lastfm import _USER_ARTISTS
from stamen.simulation.datasets.movielens import _RATINGS_CSV, _RATINGS_DAT, _U_DATA
from stamen.simulation.datasets.parsing import TableFormat, require_file

__all__ = ["EVENT_FILES", "EventLayout", "PresetFile"]


@dataclass(frozen=True)
class EventLayout:
    """A file layout, its text encoding, and the event kind its rows become."""

    table: TableFormat
    encoding: str
    kind: str


#: Known layouts by file name.
EVENT_FILES: dict[str, EventLayout] = {
    "u.data": EventLayout(_U_DATA, "utf-8", "rating"),
    "ratings.dat": EventLayout(_RATINGS_DAT, "latin-1", "rating"),
    "ratings.csv": EventLayout(_RATINGS_CSV, "utf-8", "rating"),
    "user_artists.dat": EventLayout(_USER_ARTISTS, "utf-8", "play"),
}


class PresetFile:
    """One person's events in a data set's interaction file (see module docstring)."""

    def __init__(self, path: str | Path, *, layout: str | None = None, user: int | None = None):
        self.path = require_file(Path(path), "an interaction file")
        name = layout or self.path.name
        if name not in EVENT_FILES:
            raise DataError(
                f"{self.path}: unknown layout {name!r}; name one of {sorted(EVENT_FILES)} "
                "with --format, or give a .csv / .jsonl events file"
            )
        self.spec = EVENT_FILES[name]
        self.user = user
        self.line = 0
        self._size = self.path.stat().st_size
        self._handle: IO[bytes] | None = None

    def column(self, field: str) -> str:
        """The layout's name of an event field."""
        table = self.spec.table
        where = {"item": table.item, "value": table.value, "at": table.timestamp}.get(field)
        return field if where is None else table.columns[where].name

    def progress(self) -> tuple[int, int]:
        """Bytes read so far and the file's size."""
        handle = self._handle
        if handle is None or handle.closed:
            return (0 if handle is None else self._size), self._size
        return min(handle.tell(), self._size), self._size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        table, users, found = self.spec.table, set(), False
        for values in self._rows():
            person = int(values[table.user])
            users.add(person)
            if self.user is None and len(users) > 1:
                raise DataError(f"{self.path}: holds several users; choose one with --user")
            if self.user is not None and person != self.user:
                continue
            found = True
            at = None if table.timestamp is None else float(values[table.timestamp])
            event: dict[str, Any] = {"item": str(int(values[table.item])), "kind": self.spec.kind}
            event["value"] = float(values[table.value])
            if at is not None:
                event["at"] = at
            yield event
        if not found:
            whose = "" if self.user is None else f" for user {self.user}"
            raise DataError(f"{self.path}: no events{whose}")

    def _rows(self) -> Iterator[list[int | float]]:
        table = self.spec.table
        skip = 0 if table.header is None else 1
        with self.path.open("rb") as handle:
            self._handle = handle
            for self.line, raw in enumerate(handle, start=1):
                try:
                    text = raw.decode(self.spec.encoding).rstrip("\r\n")
                except UnicodeDecodeError as error:
                    raise DataFormatError(str(error), path=self.path, line=self.line) from None
                if self.line <= skip or not text.strip():
                    continue
                yield self._fields(text)

    def _fields(self, text: str) -> list[int | float]:
        table = self.spec.table
        fields = text.split(table.sep)
        if len(fields) != len(table.columns):
            raise DataFormatError(
                f"{len(fields)} fields; expected {table.describe()}", path=self.path, line=self.line
            )
        values = []
        for column, field in zip(table.columns, fields, strict=True):
            try:
                value = column.parse(field)
            except ValueError as error:
                raise DataFormatError(
                    str(error), path=self.path, line=self.line, field=column.name
                ) from None
            if (problem := column.problem(value)) is not None:
                raise DataFormatError(problem, path=self.path, line=self.line, field=column.name)
            values.append(value)
        return values
