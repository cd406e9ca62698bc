"""Events files a device imports (``Device.import_events``, ``stamen device import``).

A file holds one person's events, one per row: CSV (a header row naming the columns) or
JSON lines (one object per line), told apart by the suffix (``.csv``; ``.jsonl``,
``.ndjson``) or named with ``format``. Its columns are the event's fields: ``item``
(required; any string id), ``kind`` (required unless ``kind=`` gives every row's),
``value`` (default 1), ``at`` (seconds since the epoch, or ISO 8601 with a UTC offset;
default: now), ``id`` (the app's own event id: importing the same file again stores
nothing twice). ``columns`` maps a field to the file's own column name
(``{"item": "movie_id", "at": "timestamp"}``). Columns that are none of these are
reported back (:attr:`EventFile.ignored`), never silently read.

The file is read as a stream (:class:`EventFile` is an iterable of event mappings), so
an import holds one chunk of rows in memory at a time; :attr:`EventFile.line` is the line
the row being read came from, so that an error names the file, the line and the column.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator, Mapping
from datetime import datetime
from io import TextIOWrapper
from pathlib import Path
from typing import IO, Any, Protocol

from stamen.errors import DataError, DataFormatError

__all__ = ["EVENT_FIELDS", "FORMATS", "EventFile", "EventSource"]

#: The fields of an event a file may give.
EVENT_FIELDS = ("item", "kind", "value", "at", "id")
#: Formats by file suffix.
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class EventSource(Protocol):
    """What ``Device.import_events`` reads: event mappings, and where each came from."""

    path: Path
    line: int  # the line of the event being read (0 before the first)

    def __iter__(self) -> Iterator[dict[str, Any]]: ...

    def column(self, field: str) -> str:
        """The file's name of an event field (for error messages)."""
        ...

    def progress(self) -> tuple[int, int]:
        """Bytes read so far and the file's size."""
        ...


class EventFile:
    """One person's events file (see module docstring), read lazily.

    Raises (when read):
        DataError: a missing or unreadable file, an unknown format, a header without the
            required columns.
        DataFormatError: a row that does not parse (file, line and column named).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        format: str | None = None,
        columns: Mapping[str, str] | None = None,
        kind: str | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such events file")
        self.format = format or FORMATS.get(self.path.suffix.lower(), "")
        if self.format not in ("csv", "jsonl"):
            raise DataError(
                f"{self.path}: unknown events file format {self.format or self.path.suffix!r}; "
                "give a .csv or .jsonl file, or name the format (csv, jsonl)"
            )
        unknown = sorted(set(columns or {}) - set(EVENT_FIELDS))
        if unknown:
            raise DataError(f"columns for unknown fields {unknown}; fields: {EVENT_FIELDS}")
        self.names = {field: field for field in EVENT_FIELDS} | dict(columns or {})
        self._used = set(self.names.values())
        self.kind = kind
        self.line = 0
        self.ignored: tuple[str, ...] = ()
        self._size = self.path.stat().st_size
        self._raw: IO[bytes] | None = None

    def column(self, field: str) -> str:
        """The file's name of an event field."""
        return self.names.get(field, field)

    def progress(self) -> tuple[int, int]:
        """Bytes read so far (to the reader's buffer) and the file's size."""
        raw = self._raw
        if raw is None or raw.closed:
            return (0 if raw is None else self._size), self._size
        return min(raw.tell(), self._size), self._size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with self.path.open("rb") as raw, TextIOWrapper(raw, "utf-8", newline="") as handle:
            self._raw = raw
            rows = self._csv(handle) if self.format == "csv" else self._jsonl(handle)
            for row in rows:
                yield self._event(row)

    # -- formats ----------------------------------------------------------------------

    def _csv(self, handle: IO[str]) -> Iterator[dict[str, str]]:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{self.path}: empty file; the first row names the columns") from None
        except (csv.Error, UnicodeDecodeError) as error:
            raise DataFormatError(str(error), path=self.path, line=1) from None
        self.line = 1
        self._check_columns(header)
        try:
            for fields in reader:
                self.line = reader.line_num
                if not fields:
                    continue
                if len(fields) != len(header):
                    raise DataFormatError(
                        f"{len(fields)} fields; the header names {len(header)}",
                        path=self.path,
                        line=self.line,
                    )
                yield dict(zip(header, fields, strict=True))
        except (csv.Error, UnicodeDecodeError) as error:
            raise DataFormatError(str(error), path=self.path, line=self.line + 1) from None

    def _jsonl(self, handle: IO[str]) -> Iterator[dict[str, Any]]:
        checked = False
        try:
            for self.line, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    row = json.loads(text)
                except ValueError as error:
                    raise DataFormatError(
                        f"not JSON ({error})", path=self.path, line=self.line
                    ) from None
                if not isinstance(row, dict):
                    raise DataFormatError(
                        f"expected a JSON object, got {type(row).__name__}",
                        path=self.path,
                        line=self.line,
                    )
                if not checked:  # the first object's keys stand for the header
                    self._check_columns(list(row))
                    checked = True
                extra = [key for key in row if key not in self._used and key not in self.ignored]
                self.ignored += tuple(extra)  # a later object's own keys are reported too
                yield row
        except UnicodeDecodeError as error:
            raise DataFormatError(str(error), path=self.path, line=self.line + 1) from None

    def _check_columns(self, header: list[str]) -> None:
        required = ["item"] + ([] if self.kind is not None else ["kind"])
        missing = [self.names[f] for f in required if self.names[f] not in header]
        if missing:
            hint = "" if self.kind is not None else " (or give every row's kind)"
            raise DataFormatError(
                f"no column {missing}{hint}; the columns are {header}", path=self.path, line=1
            )
        self.ignored = tuple(name for name in header if name not in self._used)

    # -- one row ----------------------------------------------------------------------

    def _event(self, row: Mapping[str, Any]) -> dict[str, Any]:
        event: dict[str, Any] = {}
        for field in EVENT_FIELDS:
            raw = row.get(self.names[field])
            if raw is None or raw == "":
                continue
            event[field] = self._parse(field, raw)
        if "kind" not in event and self.kind is not None:
            event["kind"] = self.kind
        for field in ("item", "kind"):
            if field not in event:
                raise DataFormatError(
                    "empty", path=self.path, line=self.line, field=self.column(field)
                )
        return event

    def _parse(self, field: str, raw: Any) -> Any:
        if field in ("item", "kind", "id"):
            return str(raw) if isinstance(raw, str | int) and not isinstance(raw, bool) else raw
        if field == "value":
            return _number(raw)
        return _time(raw, self, field)


def _number(raw: Any) -> Any:
    """A CSV field as a number (the device's validation names anything else)."""
    if isinstance(raw, str):
        try:
            return float(raw)
        except ValueError:
            return raw
    return raw


def _time(raw: Any, source: EventFile, field: str) -> Any:
    number = _number(raw)
    if not isinstance(number, str):
        return number
    try:
        at = datetime.fromisoformat(number)
    except ValueError:
        raise DataFormatError(
            f"{raw!r} is neither seconds since the epoch nor an ISO 8601 time",
            path=source.path,
            line=source.line,
            field=source.column(field),
        ) from None
    if at.tzinfo is None:
        raise DataFormatError(
            f"{raw!r} has no UTC offset (write it as {raw}+00:00 or {raw}Z)",
            path=source.path,
            line=source.line,
            field=source.column(field),
        )
    seconds = at.timestamp()
    return seconds if math.isfinite(seconds) else raw
