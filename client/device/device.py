"""``Device``: the library an app embeds (record events, apply releases, recommend).

A device lives in one folder of its own::

    device.db, device.db-wal, device.db-shm   the events, encrypted as a whole (SQLCipher)
    release.stamen                            the installed release, signed, as published
    release.stamen.<name>.npy                 large arrays derived from the release alone
                                              (``stamen.client.device.derived``)

The store key comes from the app's keystore and is never written to the folder; the
publisher's Ed25519 public key is pinned in the (encrypted, authenticated) store when the
device is created. The release file holds only the published model and catalogue, never
anything about the person. It is memory-mapped, never read whole, and verified when it
is installed and again at any open that finds the file changed since
(``stamen.client.device.releases``).

What the device knows about the person is derived from the events on every event: their
items (the most recent event positive), the items they rejected (the most recent event
negative feedback), and the user vector of the release's model (``RecModel.serving``):
for matrix factorisation the user factor, re-solved exactly against the installed item
factors for the ``ials`` objective (a few gradient steps for other losses); for the
two-tower model the user tower over the history, against the catalogue's item-tower
embeddings computed once per release. ``recommend`` ranks the catalogue with it; nothing
leaves the device.

Thread safety: every public method takes one lock, so a UI thread may record while a
background thread recommends or trains; calls are serialised, never interleaved.
"""

from __future__ import annotations

import os
from pathlib import Path

from stamen.client.device.candidates import CandidatesMixin
from stamen.client.device.events import RATING_THRESHOLD
from stamen.client.device.experiment_arms import ExperimentsMixin
from stamen.client.device.folder import (
    LOCK_FILE,
    MARKER_FILE,
    FolderLock,
    Marker,
    check_adoptable,
    new_marker,
    read_marker,
)
from stamen.client.device.impressions_log import ImpressionsMixin
from stamen.client.device.portability import PortabilityMixin, stamen_files
from stamen.client.device.releases import ReleasesMixin
from stamen.client.device.serving import ServingMixin
from stamen.client.device.store import DB_NAME, EventStore
from stamen.client.pipeline.recommend import PipelineSettings
from stamen.errors import DecryptionError, ReleaseError, StoreCorruptError, StoreLostError

__all__ = ["Device"]

_PINNED_KEY = "release_key"
_STORE_ID = "store_id"


class Device(
    CandidatesMixin,
    ReleasesMixin,
    ServingMixin,
    ImpressionsMixin,
    ExperimentsMixin,
    PortabilityMixin,
):
    """One person's device (see module docstring). Create with :meth:`open`.

    Its parts: the events and derived state (``stamen.client.device.core``), releases
    (``.releases``), recommending (``.serving``), the impression log
    (``.impressions_log``), A/B experiments (``.experiment_arms``), the person's rights
    (``.portability``)."""

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        key: bytes,
        release_key: bytes | None = None,
        pipeline: PipelineSettings | None = None,
        seed: int | None = None,
        rating_threshold: float | None = RATING_THRESHOLD,
    ) -> Device:
        """Open the device in folder ``path``, creating it there if the folder is new or
        empty. The folder is the device's own (``stamen.client.device.folder``): a
        marker says a device lives there, and one ``Device`` at a time holds it.

        Args:
            path: the device's own folder (created if missing).
            key: the 32-byte store key, from the app's keystore (never written here).
            release_key: the publisher's raw 32-byte Ed25519 public key. Required to
                create a device, which pins it for life; later opens may omit it, and a
                different key is refused.
            pipeline: the recommendation pipeline's settings (default ``PipelineSettings()``).
            seed: seeds the pipeline's exploration (``None``: the operating system's
                entropy).
            rating_threshold: a ``rating`` event at or above it is a like, below it
                negative feedback (default 3, for 1–5 stars; ``None``: every rating is a
                like). Events are stored as recorded: the threshold only reads them.

        Raises:
            DecryptionError: ``key`` is not this store's key.
            StoreLostError: the folder's marker says a device lives here but its
                database is missing, empty or another device's; nothing was created
                (restore an export into :meth:`start_over`'s device, or start over).
            StoreCorruptError: the database is damaged (the key is right).
            NotAStoreError: the folder is not empty and not a device's.
            DeviceBusyError: another process, or another open ``Device``, holds it.
            ReleaseError: ``release_key`` differs from the pinned key, or is missing for
                a new device.
            ValueError: a key has the wrong length.
        """
        return cls._open(
            Path(path), key, release_key, pipeline, seed, rating_threshold, start_over=False
        )

    @classmethod
    def start_over(
        cls,
        path: str | os.PathLike[str],
        *,
        key: bytes,
        release_key: bytes,
        pipeline: PipelineSettings | None = None,
        seed: int | None = None,
        rating_threshold: float | None = RATING_THRESHOLD,
    ) -> Device:
        """Erase the device in ``path`` (its files only, as :meth:`forget` does) and create
        a new one there: what an app calls after :class:`StoreLostError` when it has no
        export to restore (or to restore one into the new device). Same arguments and
        errors as :meth:`open`; ``release_key`` is required."""
        return cls._open(
            Path(path), key, release_key, pipeline, seed, rating_threshold, start_over=True
        )

    @classmethod
    def _open(
        cls,
        folder: Path,
        key: bytes,
        release_key: bytes | None,
        pipeline: PipelineSettings | None,
        seed: int | None,
        rating_threshold: float | None,
        *,
        start_over: bool,
    ) -> Device:
        if release_key is not None and len(release_key) != 32:
            raise ValueError(f"release_key must be 32 bytes (got {len(release_key)})")
        if len(key) != 32:
            raise ValueError(f"key must be 32 bytes (got {len(key)})")
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = FolderLock(folder)
        try:
            if start_over:  # erase Stamen's files, even a damaged marker; nobody else's
                if not (folder / MARKER_FILE).exists() and not (folder / DB_NAME).exists():
                    check_adoptable(folder)
                for stale in stamen_files(folder):
                    stale.unlink()
            store, marker, new = _claim(folder, key, release_key)
            try:
                pinned = _pin(folder, store, release_key)
                device = cls(folder, store, pinned, pipeline, seed, rating_threshold)
            except BaseException:
                store.close()
                raise
            if new:
                marker.write(folder)  # last: a marker means the database is whole
            device._folder_lock = lock
            device._load_installed()
            return device
        except BaseException:
            lock.release()
            if not (folder / MARKER_FILE).exists() and not (folder / DB_NAME).exists():
                (folder / LOCK_FILE).unlink(missing_ok=True)  # leave the folder as it was
                if created:
                    folder.rmdir()
            raise


def _claim(folder: Path, key: bytes, release_key: bytes | None) -> tuple[EventStore, Marker, bool]:
    """Open the folder's store, or create one in a new or empty folder: the store, its
    marker and whether the marker is still to be written."""
    database = folder / DB_NAME
    marker = read_marker(folder)
    if marker is not None:
        if not database.exists() or database.stat().st_size == 0:
            state = "missing" if not database.exists() else "empty"
            raise StoreLostError(
                f"{database}: this device's database is {state}; nothing was created. "
                "Restore an export into Device.start_over(...), or start over"
            )
        if not marker.matches(key):
            raise DecryptionError(f"{database}: wrong key for this device's store")
        try:
            store = EventStore(folder, key=key)
        except DecryptionError as error:  # the key is right: the file is damaged
            raise StoreCorruptError(str(error).split(": ", 1)[-1], path=database) from None
        if store.get_meta(_STORE_ID) != marker.store.encode():
            store.close()
            raise StoreLostError(
                f"{database}: this database is not the one created in this folder; "
                "nothing was changed"
            )
        return store, marker, False
    if not database.exists():
        check_adoptable(folder)
        if release_key is None:
            raise ReleaseError(f"{folder}: a new device needs the publisher's release key to pin")
    store = EventStore(folder, key=key)  # a device from before markers: adopted
    marker = new_marker(key, (store.get_meta(_STORE_ID) or b"").decode() or None)
    store.set_meta({_STORE_ID: marker.store.encode()})
    return store, marker, True


def _pin(folder: Path, store: EventStore, release_key: bytes | None) -> bytes:
    """The store's pinned release key, pinning ``release_key`` in a new store."""
    pinned = store.get_meta(_PINNED_KEY)
    if pinned is None:
        if release_key is None:
            raise ReleaseError(f"{folder}: no release key pinned; pass release_key")
        store.set_meta({_PINNED_KEY: bytes(release_key)})
        return bytes(release_key)
    if release_key is not None and bytes(release_key) != pinned:
        raise ReleaseError(
            f"{folder}: this device is pinned to another release key "
            f"({pinned.hex()[:16]}…); a device's release key never changes"
        )
    return pinned
