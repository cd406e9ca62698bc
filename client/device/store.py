"""The device's event store: one SQLCipher database, versioned, with migrations.

The file ``device.db`` (and its ``-wal`` / ``-shm`` companions) is encrypted as a whole
by ``stamen.privacy.open_encrypted_database``; every write is one transaction committed
with full synchronous WAL, so an acknowledged write survives the process being killed.

Schema version 1 (``PRAGMA user_version``)::

    meta(key TEXT PRIMARY KEY, value BLOB)        pinned release key, highest release seen
    events(seq INTEGER PRIMARY KEY AUTOINCREMENT, item TEXT, kind TEXT, value REAL,
           at REAL, context TEXT)                 every recorded event, in arrival order

Version 2 adds::

    impressions(seq INTEGER PRIMARY KEY AUTOINCREMENT, request INTEGER, position INTEGER,
                item TEXT, propensity REAL, source TEXT, at REAL)
                                                  every logged shown recommendation

Version 3 adds ``events.event_id TEXT`` (the app's own id of an event, unique where given:
a retried ``record`` is stored once).

Version 4 adds ``impressions.latency_s REAL`` (the seconds ``Device.recommend`` took to build
the shown list; NULL where not measured: rows logged before version 4, and lists the app
built itself).

``MIGRATIONS[v]`` upgrades a database from version ``v`` to ``v + 1`` inside one
transaction; opening a database runs the missing steps, and refuses one written by a
newer Stamen. Callers serialise access (``Device`` holds a lock). A page that fails
its authentication or does not parse (a damaged file) raises ``StoreCorruptError`` with
the path, from any method.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any

from stamen.client.device.events import Event
from stamen.client.device.impressions import Impression
from stamen.errors import DataError, StoreCorruptError
from stamen.privacy import open_encrypted_database
from stamen.privacy.crypto.database import DatabaseError, OperationalError

__all__ = ["CHUNK", "DB_NAME", "MIGRATIONS", "SCHEMA_VERSION", "EventStore"]

DB_NAME = "device.db"
#: Events inserted per statement when a batch or an import streams into the store.
CHUNK = 1000


def _create_v1(connection: Any) -> None:
    connection.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
    connection.execute(
        "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, item TEXT NOT NULL, "
        "kind TEXT NOT NULL, value REAL NOT NULL, at REAL NOT NULL, context TEXT)"
    )


def _add_impressions(connection: Any) -> None:
    connection.execute(
        "CREATE TABLE impressions (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
        "request INTEGER NOT NULL, position INTEGER NOT NULL, item TEXT NOT NULL, "
        "propensity REAL NOT NULL, source TEXT NOT NULL, at REAL NOT NULL)"
    )


def _add_event_ids(connection: Any) -> None:
    connection.execute("ALTER TABLE events ADD COLUMN event_id TEXT")
    connection.execute(
        "CREATE UNIQUE INDEX events_by_id ON events(event_id) WHERE event_id IS NOT NULL"
    )


def _add_latency(connection: Any) -> None:
    connection.execute("ALTER TABLE impressions ADD COLUMN latency_s REAL")


#: Step ``v`` upgrades a version-``v`` database (0: empty) to version ``v + 1``.
MIGRATIONS: dict[int, Callable[[Any], None]] = {
    0: _create_v1,
    1: _add_impressions,
    2: _add_event_ids,
    3: _add_latency,
}
SCHEMA_VERSION = len(MIGRATIONS)


class EventStore:
    """The encrypted database of one device (see module docstring)."""

    def __init__(self, folder: Path, *, key: bytes) -> None:
        self.path = folder / DB_NAME
        self._db = open_encrypted_database(self.path, key=key)
        with self.guard():
            self._migrate()

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Turn the driver's report of a damaged database into ``StoreCorruptError``
        (a busy or locked database, ``OperationalError``, passes through)."""
        try:
            yield
        except OperationalError:
            raise
        except DatabaseError as error:
            raise StoreCorruptError(
                f"the device's database is damaged ({error})", path=self.path
            ) from None

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            self._db.close()
            raise DataError(
                f"{self.path}: store schema version {version} is newer than this build's "
                f"{SCHEMA_VERSION}; upgrade Stamen"
            )
        while version < SCHEMA_VERSION:
            with self.transaction():
                MIGRATIONS[version](self._db)
                version += 1
                self._db.execute(f"PRAGMA user_version = {version}")

    def transaction(self) -> _Transaction:
        """A context manager: ``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on error)."""
        return _Transaction(self._db)

    def get_meta(self, key: str) -> bytes | None:
        """A metadata value (``None`` when unset)."""
        with self.guard():
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return None if row is None else bytes(row[0])

    def set_meta(self, values: dict[str, bytes]) -> None:
        """Set metadata values, all in one transaction."""
        with self.guard(), self.transaction():
            self._db.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                list(values.items()),
            )

    def append(
        self, events: Iterable[Event], on_stored: Callable[[list[Event]], None] | None = None
    ) -> int:
        """Store ``events`` in one transaction: all of them, or (on an error, raised by the
        iterable too) none. The iterable is consumed :data:`CHUNK` events at a time, so a
        long import streams through in constant memory; ``on_stored`` sees each chunk once
        it is inserted (before the commit). An event whose id is stored already (or came
        earlier) is a retry and is skipped; returns how many were stored."""
        stored = 0
        with self.guard(), self.transaction():
            it = iter(events)
            while chunk := list(islice(it, CHUNK)):
                fresh, seen = [], set()  # earlier chunks are in the table already
                for e in chunk:
                    if e.id is not None:
                        if (
                            e.id in seen
                            or self._db.execute(
                                "SELECT 1 FROM events WHERE event_id = ?", (e.id,)
                            ).fetchone()
                        ):
                            continue
                        seen.add(e.id)
                    fresh.append(e)
                self._db.executemany(
                    "INSERT INTO events(item, kind, value, at, context, event_id) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [(e.item, e.kind, e.value, e.at, _context_json(e), e.id) for e in fresh],
                )
                stored += len(fresh)
                if on_stored is not None:
                    on_stored(fresh)
        return stored

    def event(self, event_id: str) -> Event | None:
        """The stored event with the app's id ``event_id`` (``None``: none)."""
        with self.guard():
            row = self._db.execute(
                "SELECT item, kind, value, at, context, event_id FROM events WHERE event_id = ?",
                (event_id,),
            ).fetchone()
            return None if row is None else _event(*row)

    def events(self) -> Iterator[Event]:
        """Every stored event in arrival order."""
        with self.guard():
            cursor = self._db.execute(
                "SELECT item, kind, value, at, context, event_id FROM events ORDER BY seq"
            )
            for row in cursor:
                yield _event(*row)

    def log_impressions(self, rows: Iterable[Impression]) -> None:
        """Store shown recommendations in one transaction."""
        with self.guard():
            values = [
                (i.request, i.position, i.item, i.propensity, i.source, i.at, i.latency_s)
                for i in rows
            ]
            with self.transaction():
                self._db.executemany(
                    "INSERT INTO impressions(request, position, item, propensity, source, at, "
                    "latency_s) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    values,
                )

    def impressions(self) -> list[Impression]:
        """Every logged impression, in logging order."""
        with self.guard():
            cursor = self._db.execute(
                "SELECT request, position, item, propensity, source, at, latency_s "
                "FROM impressions ORDER BY seq"
            )
            return [
                Impression(
                    int(r), int(p), i, float(q), s, float(a), None if t is None else float(t)
                )
                for r, p, i, q, s, a, t in cursor
            ]

    def next_request(self) -> int:
        """One more than the highest logged request number (0 when none)."""
        with self.guard():
            row = self._db.execute("SELECT max(request) FROM impressions").fetchone()
            return 0 if row[0] is None else int(row[0]) + 1

    def count(self) -> int:
        """Number of stored events."""
        with self.guard():
            return int(self._db.execute("SELECT count(*) FROM events").fetchone()[0])

    def close(self) -> None:
        """Checkpoint the WAL into the database and close the connection."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.close()


def _context_json(event: Event) -> str | None:
    return json.dumps(dict(event.context)) if event.context else None


def _event(
    item: str, kind: str, value: float, at: float, context: str | None, event_id: str | None
) -> Event:
    return Event(
        item=item,
        kind=kind,
        value=float(value),
        at=float(at),
        context=json.loads(context) if context else {},
        id=event_id,
    )


class _Transaction:
    def __init__(self, db: Any) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
