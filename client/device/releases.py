"""Releases on a device: verify a signed release, refuse rollbacks and substitutions,
install it atomically, and hold what it serves (:class:`ServedRelease`) in memory."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from stamen.client.device.core import DeviceCore
from stamen.client.device.served import ReleaseInfo, ServedRelease
from stamen.errors import (
    DataError,
    ReleaseError,
    RollbackError,
    SignatureError,
    StamenError,
)
from stamen.models.bundle import ReleaseBundle
from stamen.models.registry import model_class
from stamen.privacy import open_signed, write_atomically

__all__ = ["RELEASE_FILE", "ReleasesMixin"]

_log = logging.getLogger("stamen.device")

RELEASE_FILE = "release.stamen"
_HIGHEST = "highest_release"
_DIGEST = "release_sha256"


class ReleasesMixin(DeviceCore):
    """Applying and loading releases (a part of ``Device``)."""

    def _load_installed(self) -> None:
        path = self.folder / RELEASE_FILE
        if not path.exists():
            return
        try:
            bundle, digest = self._verified(path.read_bytes(), str(path))
        except (SignatureError, DataError, ReleaseError) as error:
            self._release_error = error
            _log.warning("%s: installed release ignored (%s); apply a release again", path, error)
            return
        highest = self._highest()
        if bundle.release < highest or (
            bundle.release == highest and digest != self._open_store().get_meta(_DIGEST)
        ):
            self._release_error = ReleaseError(
                f"{path}: installed release {bundle.release} is not the release {highest} "
                "this device last installed; ignored"
            )
            _log.warning("%s", self._release_error)
            return
        self._serving = ServedRelease(bundle, digest)
        self._refresh()

    @property
    def release_error(self) -> StamenError | None:
        """Why the installed release file was not served when the device opened (damaged,
        tampered, or not the release this device last installed), else ``None``. The
        device then recommends nothing until a release is applied again (the same
        release may be re-applied), which clears this."""
        return self._release_error

    def _highest(self) -> int:
        raw = self._open_store().get_meta(_HIGHEST)
        return -1 if raw is None else int(raw.decode())

    def _verified(self, data: bytes, source: str) -> tuple[ReleaseBundle, bytes]:
        payload = open_signed(data, public_key=self._release_key, source=source)
        bundle = ReleaseBundle.decode(payload, source=source)
        try:
            model_class(bundle.model)
        except ValueError:
            raise ReleaseError(
                f"{source}: model {bundle.model!r} is not one this device serves"
            ) from None
        return bundle, hashlib.sha256(data).digest()

    def apply_release(
        self, bundle: bytes | str | os.PathLike[str], *, link: bool = False
    ) -> ReleaseInfo:
        """Verify and install a signed release (a file path or its bytes).

        The device keeps its own copy of the file. With ``link=True`` (a path only) it
        hard-links the file instead, where the file system allows: for files that are
        replaced, never rewritten in place, such as the server's ``release-NNNNNN.stamen``
        (simulations share one release among many devices this way). Re-applying the
        installed release changes nothing.

        Raises:
            SignatureError: unsigned, tampered, or signed by another key than the pinned.
            BundleError: signed but not a readable bundle.
            RollbackError: older than the newest release this device installed.
            ReleaseError: same number as the installed one with other contents, or a
                model this device does not serve.
            In every case the installed release stays.
        """
        path = None if isinstance(bundle, bytes | bytearray | memoryview) else Path(bundle)
        data = bytes(bundle) if path is None else path.read_bytes()  # type: ignore[arg-type]
        source = "release bundle" if path is None else str(path)
        with self._lock:
            store = self._open_store()
            release, digest = self._verified(data, source)
            highest = self._highest()
            if release.release < highest:
                raise RollbackError(
                    f"{source}: release {release.release} is older than release {highest}, "
                    "which this device installed; refused"
                )
            if release.release == highest and digest != store.get_meta(_DIGEST):
                raise ReleaseError(
                    f"{source}: release {highest} is installed with other contents; refused"
                )
            if self._serving is not None and self._serving.digest == digest:
                return self.release  # type: ignore[return-value]
            serving = ServedRelease(release, digest)  # before installing: it may refuse
            self._install_file(data, path if link else None)
            store.set_meta({_HIGHEST: str(release.release).encode(), _DIGEST: digest})
            self._serving, self._release_error = serving, None
            self._refresh()
            return self.release  # type: ignore[return-value]

    def _install_file(self, data: bytes, source: Path | None) -> None:
        """Put the release file in place atomically: a hard link to ``source`` where given
        and possible (the file is verified again at every open), else a written, fsynced
        copy."""
        target = self.folder / RELEASE_FILE
        if source is not None:
            link = self.folder / f".{RELEASE_FILE}.link"
            try:
                link.unlink(missing_ok=True)
                os.link(source, link)
                os.replace(link, target)
                return
            except OSError:
                link.unlink(missing_ok=True)
        write_atomically(target, data, mode=0o600)
