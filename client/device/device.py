"""``Device``: the library an app embeds (record events, apply releases, recommend).

A device lives in one folder of its own::

    device.db, device.db-wal, device.db-shm   the events, encrypted as a whole (SQLCipher)
    release.stamen                            the installed release, signed, as published

The store key comes from the app's keystore and is never written to the folder; the
publisher's Ed25519 public key is pinned in the (encrypted, authenticated) store when the
device is created. The release file holds only the published model and catalogue, never
anything about the person, and is verified again every time the device opens.

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

from stamen.client.device.impressions_log import ImpressionsMixin
from stamen.client.device.portability import PortabilityMixin
from stamen.client.device.releases import ReleasesMixin
from stamen.client.device.serving import ServingMixin
from stamen.client.device.store import DB_NAME, EventStore
from stamen.client.pipeline.recommend import PipelineSettings
from stamen.errors import (
    ReleaseError,
)

__all__ = ["Device"]

_PINNED_KEY = "release_key"


class Device(ReleasesMixin, ServingMixin, ImpressionsMixin, PortabilityMixin):
    """One person's device (see module docstring). Create with :meth:`open`.

    Its parts: the events and derived state (``stamen.client.device.core``), releases
    (``.releases``), recommending (``.serving``), the impression log
    (``.impressions_log``), the person's rights (``.portability``)."""

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        key: bytes,
        release_key: bytes | None = None,
        pipeline: PipelineSettings | None = None,
        seed: int | None = None,
    ) -> Device:
        """Open the device in folder ``path``, creating it (and the folder) if needed.

        Args:
            path: the device's own folder.
            key: the 32-byte store key, from the app's keystore (never written here).
            release_key: the publisher's raw 32-byte Ed25519 public key. Required to
                create a device, which pins it for life; later opens may omit it, and a
                different key is refused.
            pipeline: the recommendation pipeline's settings (default ``PipelineSettings()``).
            seed: seeds the pipeline's exploration (``None``: the operating system's
                entropy).

        Raises:
            DecryptionError: the store does not open under ``key``.
            ReleaseError: ``release_key`` differs from the pinned key, or is missing for
                a new device.
            ValueError: a key has the wrong length.
        """
        folder = Path(path)
        if release_key is not None and len(release_key) != 32:
            raise ValueError(f"release_key must be 32 bytes (got {len(release_key)})")
        new = not (folder / DB_NAME).exists()
        if new and release_key is None:
            raise ReleaseError(f"{folder}: a new device needs the publisher's release key to pin")
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        store = EventStore(folder, key=key)
        pinned = store.get_meta(_PINNED_KEY)
        if pinned is None:
            if release_key is None:
                store.close()
                raise ReleaseError(f"{folder}: no release key pinned; pass release_key")
            store.set_meta({_PINNED_KEY: bytes(release_key)})
            pinned = bytes(release_key)
        elif release_key is not None and bytes(release_key) != pinned:
            store.close()
            raise ReleaseError(
                f"{folder}: this device is pinned to another release key "
                f"({pinned.hex()[:16]}…); a device's release key never changes"
            )
        device = cls(folder, store, pinned, pipeline, seed)
        device._load_installed()
        return device
