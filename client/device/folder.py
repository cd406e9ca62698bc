"""A device's folder is Stamen's alone: a marker that says a device lives here, a key
check that tells a wrong key from a damaged database, and a lock for one opener at a time.

    stamen-device.json   {"format", "store", "key_check"}: written once, after the
                         database was created, so a marker without a database means the
                         database was lost (never a half-created device)
    device.lock          held with an exclusive ``flock`` while a ``Device`` is open

``store`` is a random id that the database also holds (its ``meta`` table): a database
copied in from another device is not this folder's. ``key_check`` is
HMAC-SHA256(key, "stamen-device-key-check:" + store), from the standard library: it
tells whether a key is the store's without decrypting anything, and reveals nothing
about a random 32-byte key.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from stamen.errors import DeviceBusyError, NotAStoreError, StoreCorruptError
from stamen.privacy import write_atomically

__all__ = [
    "LOCK_FILE",
    "MARKER_FILE",
    "FolderLock",
    "Marker",
    "check_adoptable",
    "new_marker",
    "read_marker",
]

MARKER_FILE = "stamen-device.json"
LOCK_FILE = "device.lock"
_FORMAT = "stamen-device/1"


@dataclass(frozen=True)
class Marker:
    """What the folder's marker file holds."""

    store: str
    key_check: str

    def matches(self, key: bytes) -> bool:
        """Whether ``key`` is this store's key."""
        return hmac.compare_digest(self.key_check, _key_check(key, self.store))

    def write(self, folder: Path) -> None:
        """Write the marker atomically, owner-only."""
        body = {"format": _FORMAT, "store": self.store, "key_check": self.key_check}
        write_atomically(folder / MARKER_FILE, json.dumps(body).encode(), mode=0o600)


def new_marker(key: bytes, store: str | None = None) -> Marker:
    """A marker for a store (a fresh random id unless ``store`` is given) under ``key``."""
    store = store or uuid.uuid4().hex
    return Marker(store=store, key_check=_key_check(key, store))


def read_marker(folder: Path) -> Marker | None:
    """The folder's marker (``None`` when it has none).

    Raises:
        StoreCorruptError: the marker exists but is not one Stamen wrote.
    """
    path = folder / MARKER_FILE
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise StoreCorruptError(f"unreadable device marker ({error})", path=path) from None
    if (
        not isinstance(raw, dict)
        or raw.get("format") != _FORMAT
        or not isinstance(raw.get("store"), str)
        or not isinstance(raw.get("key_check"), str)
    ):
        raise StoreCorruptError(f"not a {_FORMAT} marker", path=path)
    return Marker(store=raw["store"], key_check=raw["key_check"])


def check_adoptable(folder: Path) -> None:
    """Refuse a folder without a marker or database that holds anything but the lock.

    Raises:
        NotAStoreError: the folder holds other files (up to three are named).
    """
    others = sorted(p.name for p in folder.iterdir() if p.name != LOCK_FILE)
    if others:
        shown = ", ".join(others[:3]) + (", …" if len(others) > 3 else "")
        raise NotAStoreError(
            f"{folder}: not a Stamen device folder and not empty ({shown}); a device needs "
            "a folder of its own"
        )


class FolderLock:
    """An exclusive, non-blocking ``flock`` on the folder's lock file, held until
    :meth:`release` (or the process ends: the OS drops it, so a crash never leaves a
    device locked)."""

    def __init__(self, folder: Path) -> None:
        path = folder / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DeviceBusyError(
                f"{folder}: the device is open elsewhere (another process, or another "
                "Device in this one); close it first"
            ) from None
        self._handle: IO[bytes] | None = os.fdopen(fd, "r+b")

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def _key_check(key: bytes, store: str) -> str:
    message = b"stamen-device-key-check:" + store.encode()
    return hmac.new(bytes(key), message, hashlib.sha256).hexdigest()
