"""The person's rights on a device: export everything stored, restore an export, import
an events file, forget (a part of ``Device``)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stamen.client.device.core import DeviceCore
from stamen.client.device.derived import DERIVED_GLOB
from stamen.client.device.event_files import EventFile, EventSource
from stamen.client.device.folder import LOCK_FILE, MARKER_FILE
from stamen.client.device.releases import RELEASE_FILE
from stamen.client.device.store import DB_NAME
from stamen.errors import DataError, DataFormatError, EventError
from stamen.privacy import write_atomically

__all__ = ["EXPORT_FORMAT", "Imported", "PortabilityMixin", "stamen_files"]

EXPORT_FORMAT = "stamen-device-export/1"


@dataclass(frozen=True)
class Imported:
    """What :meth:`PortabilityMixin.import_events` did: events stored, rows read (a row
    whose ``id`` was stored already is read and not stored again), and the file's
    columns that are no event field (not read)."""

    stored: int
    read: int
    ignored_columns: tuple[str, ...] = ()


class PortabilityMixin(DeviceCore):
    """Export, restore and forget (a part of ``Device``)."""

    def export(self, path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """Everything stored about the person, as JSON (written to ``path`` if given,
        atomically and readable by the owner only):
        the events, the logged impressions, the derived state (items, rejected items,
        user factor) and what is installed. :meth:`restore` reads the events back."""
        with self._lock:
            release = self.release
            catalog = None if self._serving is None else self._serving.bundle.catalog
            ids = catalog.item_ids_of if catalog else None
            data = {
                "format": EXPORT_FORMAT,
                "exported_at": time.time(),
                "release_key": self._release_key.hex(),
                "release": None if release is None else release.__dict__,
                "events": [event.to_json() for event in self._open_store().events()],
                "impressions": [i.__dict__ for i in self._open_store().impressions()],
                "state": {
                    "items": ids(self._items) if ids else [],
                    "rejected": ids(self._rejected) if ids else [],
                    "user_factor": None if self._factor is None else self._factor.tolist(),
                },
            }
        if path is not None:  # owner-only: it holds everything about the person
            write_atomically(path, json.dumps(data, indent=1).encode(), mode=0o600)
        return data

    def restore(self, export: Mapping[str, Any] | str | os.PathLike[str]) -> int:
        """Record the events of an :meth:`export` (a dict or the JSON file's path) into
        this device, which must hold no events yet. Returns the number restored.

        Raises:
            DataError: not an export of this format, or the device already holds events.
            EventError: an exported event is malformed (nothing is stored).
        """
        if not isinstance(export, Mapping):
            source = str(export)
            try:
                export = json.loads(Path(export).read_text())
            except (OSError, ValueError) as error:
                raise DataError(f"{source}: not a readable export ({error})") from None
        if not isinstance(export, Mapping) or export.get("format") != EXPORT_FORMAT:
            raise DataError(f"not a {EXPORT_FORMAT} export")
        with self._lock:
            if self._open_store().count():
                raise DataError(f"{self.folder}: restore needs a device without events")
            return self.record_many(export.get("events", []))

    def import_events(
        self,
        source: str | os.PathLike[str] | EventSource,
        *,
        format: str | None = None,
        columns: Mapping[str, str] | None = None,
        kind: str | None = None,
        progress: Callable[[int, int, int], None] | None = None,
    ) -> Imported:
        """Record the events of a file (CSV or JSON lines: see
        :mod:`stamen.client.device.event_files` for its columns; ``format``, ``columns``
        and ``kind`` as there), or of another :class:`EventSource`, in ONE transaction:
        every event or, on any error, none. The file is streamed: memory stays flat
        however long it is. ``progress(events, bytes_read, file_bytes)`` is called as
        chunks are stored.

        Raises:
            DataError: no such file, an unknown format, missing columns.
            DataFormatError: a bad row, naming the file, the line and the column; nothing
                of the file is stored.
        """
        if isinstance(source, str | os.PathLike):
            source = EventFile(source, format=format, columns=columns, kind=kind)
        elif format is not None or columns is not None or kind is not None:
            raise DataError("format, columns and kind describe a file; this source is read as is")
        reader = source
        report = None if progress is None else (lambda n: progress(n, *reader.progress()))
        read = 0

        def counted() -> Iterator[dict[str, Any]]:
            nonlocal read
            for read, event in enumerate(reader, start=1):  # noqa: B007
                yield event

        try:
            stored = self.record_many(counted(), progress=report)
        except EventError as error:
            raise DataFormatError(
                error.reason, path=reader.path, line=reader.line, field=reader.column(error.field)
            ) from None
        ignored = tuple(getattr(reader, "ignored", ()))
        return Imported(stored=stored, read=read, ignored_columns=ignored)

    def forget(self) -> None:
        """Erase everything this device stored: the database with its WAL and journal
        files, the installed release (and any half-written copy of it), the derived
        state; the device is closed. Only Stamen's own files are removed: anything else
        the app keeps in the folder stays, and so does the folder."""
        with self._lock:
            self.close()
            for path in stamen_files(self.folder):
                path.unlink(missing_ok=True)
            (self.folder / LOCK_FILE).unlink(missing_ok=True)
            self._latest.clear()
            self._contexts.clear()
            self._serving, self._factor = None, None
            self._items = self._rejected = np.zeros(0, np.int64)


def stamen_files(folder: Path) -> list[Path]:
    """The files a device keeps in ``folder`` (``stamen.client.device``), but for its lock
    file: its marker, its database and the SQLite companions, the installed release, the
    link and temporary files that installing a release or the marker leaves while it
    runs, the arrays derived from the release (``stamen.client.device.derived``)."""
    names = [DB_NAME, *(f"{DB_NAME}{suffix}" for suffix in ("-wal", "-shm", "-journal"))]
    names += [MARKER_FILE, RELEASE_FILE, f".{RELEASE_FILE}.link"]
    found = [folder / name for name in names]
    found += sorted(folder.glob(DERIVED_GLOB))
    for name in (RELEASE_FILE, MARKER_FILE):
        found += sorted(folder.glob(f".{name}.*.tmp"))
    return [path for path in found if path.is_file() or path.is_symlink()]
