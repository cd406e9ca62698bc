"""Model releases: a signed bundle after every round, in a folder an app's backend or a
SuperNode fetches from.

    releases/release-000123.stamen   release 123 (the global model after round 123), signed
    releases/latest                  the newest file's name, replaced atomically
    releases/release.pub             the raw Ed25519 public key devices pin

Every file is written to a temporary name, fsynced and renamed, so a reader sees a whole
release or none. Popularity in a bundle is the learned item bias: it comes out of the
same federated (securely aggregated, DP when enabled) training as the factors, so the
no-history fallback costs no extra data from anyone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stamen.errors import DataError, IndexLibraryMissing, PublishError
from stamen.models.bundle import LATEST_POINTER, ReleaseBundle, ReleaseIdentity, latest_release
from stamen.models.item_index import EXACT_BELOW, ApproximateIndex
from stamen.models.registry import RecModel
from stamen.privacy import generate_signing_key, seal_signed, write_atomically

__all__ = ["PUBLIC_KEY_FILE", "ReleaseWriter", "load_or_create_signing_key"]

_log = logging.getLogger("stamen.releases")

PUBLIC_KEY_FILE = "release.pub"


def load_or_create_signing_key(path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """The publisher's Ed25519 key pair ``(private, public)``, raw bytes: read from the
    owner-only file ``path``, or generated and written there (mode 0600) on first use.

    Raises:
        DataError: the file exists but is not a raw 32-byte private key.
    """
    path = Path(path)
    if path.exists():
        private = path.read_bytes()
        if len(private) != 32:
            raise DataError(f"{path}: {len(private)} bytes; a raw Ed25519 private key is 32")
        public = Ed25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()
        return private, public
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    private, public = generate_signing_key()
    write_atomically(path, private, mode=0o600)
    return private, public


class ReleaseWriter:
    """Writes signed release bundles of the global model into ``folder``.

    Args:
        folder: the releases folder (created if needed).
        private_key: the publisher's raw Ed25519 private key.
        public_key: its public half, written to ``release.pub``.
        model: the run's model (its registry name, settings and catalogue go into every
            bundle; devices rebuild the same model from them).
        quantize: store the model's per-item tables (``quantizable``) as int8 with a
            per-row scale.
        identity: the publisher's app id and catalogue name, written into every bundle
            (devices pin it with the model kind at their first release).
        extras: the manifest's ``extras`` written into every bundle (a deployment carries
            its starting release's experiments, ``stamen.models.experiments``).
        item_index: ship an approximate item index (``stamen.models.item_index``, built
            with faiss) in every bundle: ``None`` (default) where the catalogue has at
            least ``EXACT_BELOW`` items and faiss is installed (a warning says so where it
            is not), ``True`` always (faiss required), ``False`` never.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        private_key: bytes,
        public_key: bytes,
        model: RecModel,
        quantize: bool = False,
        identity: ReleaseIdentity | None = None,
        extras: Mapping[str, Any] | None = None,
        item_index: bool | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.item_index = item_index
        self.identity = identity
        self.extras = dict(extras or {})
        self.folder.mkdir(parents=True, exist_ok=True)
        self._private_key = private_key
        self.public_key = public_key
        self.model = model
        self.catalog = model.catalog
        self.quantize = quantize
        write_atomically(self.folder / PUBLIC_KEY_FILE, public_key, mode=0o644)

    def newest(self) -> int | None:
        """The number of the newest release in the folder (by ``latest``), or ``None``."""
        path = latest_release(self.folder)
        if path is None:
            return None
        try:
            return int(path.stem.removeprefix("release-"))
        except ValueError:
            raise PublishError(f"{path}: 'latest' names a file that is not a release") from None

    def path(self, number: int) -> Path:
        """Where release ``number`` is written."""
        return self.folder / f"release-{number:06d}.stamen"

    def publish(
        self,
        number: int,
        shared: Sequence[np.ndarray],
        *,
        trending: np.ndarray | None = None,
        ranker: Sequence[np.ndarray] | None = None,
    ) -> Path:
        """Sign and write release ``number`` of the shared arrays (the model's
        ``shared_names`` order) and, if given, the privately aggregated trending counts
        (``stamen.server.analytics``) and the federatedly trained ranker's weights
        (``stamen.models.ranker.model``), then point ``latest`` at it. Returns the file's
        path.

        Releases only move forward: ``number`` must be above the newest release in the
        folder (``latest``), and a file is never overwritten.

        Raises:
            PublishError: release ``number`` exists, or is not newer than ``latest``.
        """
        newest = self.newest()
        if (newest is not None and number <= newest) or self.path(number).exists():
            raise PublishError(
                f"{self.path(number)}: release {number} would "
                + (
                    "overwrite a published release"
                    if self.path(number).exists()
                    else f"go back from release {newest}, the folder's newest"
                )
                + "; releases only move forward (start a run from the newest release)"
            )
        model = self.model
        shared = [np.asarray(a, np.float32) for a in shared]
        model.check_shared(shared)
        bundle = ReleaseBundle(
            release=number,
            model=model.name,
            settings=model.settings.model_dump(),
            arrays=dict(zip(model.shared_names(), shared, strict=True)),
            catalog=self.catalog,
            popularity=model.popularity(shared),
            trending=trending,
            ranker=None if ranker is None else tuple(np.asarray(w, np.float32) for w in ranker),
            identity=self.identity,
            extras=self.extras,
            item_index=self._item_index(number, shared),
        )
        payload = bundle.encode(quantize=model.quantizable() if self.quantize else ())
        path = self.path(number)
        write_atomically(path, seal_signed(payload, private_key=self._private_key), mode=0o644)
        write_atomically(self.folder / LATEST_POINTER, path.name.encode(), mode=0o644)
        return path

    def _item_index(self, number: int, shared: list[np.ndarray]) -> np.ndarray | None:
        """The approximate index of what devices will serve (the model's serving table
        and biases), as ``item_index`` asks; ``None`` for none."""
        wanted = self.item_index
        if wanted is False or (wanted is None and len(self.catalog) < EXACT_BELOW):
            return None
        served = self.model.serving(shared)
        try:
            return ApproximateIndex.build(served.table, served.bias, threads=1).to_bytes()
        except IndexLibraryMissing as error:
            if wanted:
                raise
            _log.warning(
                "release %d: %d items and no approximate item index: devices score every item (%s)",
                number,
                len(self.catalog),
                error,
            )
            return None
