"""Releases on a device: verify a signed release, refuse rollbacks and substitutions,
install it atomically, and hold what it serves (:class:`ServedRelease`) in memory.

The installed file is memory-mapped (copy-on-write: nothing the device does reaches the
file), so a large release is paged in as it is read, never copied whole. Its signature
is verified when it is installed; opening the device verifies it again only when the
file's status (device, inode, size, modification and change times) differs from the one
recorded, in the encrypted store, when it was installed: a file rewritten since, even
with its times set back, has another change time. What the model derived from the
release (MF's iALS item side) is kept in the store beside that record, so reopening
derives nothing again."""

from __future__ import annotations

import json
import logging
import mmap
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stamen.client.device.core import DeviceCore
from stamen.client.device.derived import Staged, file_status, prune, read_derived, stage
from stamen.client.device.fetch import fetch_newest, is_url
from stamen.client.device.served import (
    ReleaseInfo,
    ServedRelease,
)
from stamen.errors import (
    DataError,
    ForeignReleaseError,
    ReleaseError,
    RollbackError,
    SignatureError,
    StamenError,
)
from stamen.models.bundle import ReleaseBundle, latest_release
from stamen.models.registry import model_class
from stamen.privacy import open_signed_with_sha256, signed_payload, write_staged

if TYPE_CHECKING:
    import ssl

__all__ = ["RELEASE_FILE", "ReleasesMixin"]

_log = logging.getLogger("stamen.device")

RELEASE_FILE = "release.stamen"
_HIGHEST = "highest_release"
_DIGEST = "release_sha256"
_PINNED = "release_pin"
_STATUS = "release_status"
_CACHE = "serving_cache"


class ReleasesMixin(DeviceCore):
    """Applying and loading releases (a part of ``Device``)."""

    def _load_installed(self) -> None:
        # what an apply interrupted by a crash left (a staged copy, a replaced release's
        # link): this process holds the store, so no apply of another is under way
        for stale in self.folder.glob(f".{RELEASE_FILE}.*.tmp"):
            stale.unlink(missing_ok=True)
        path = self.folder / RELEASE_FILE
        if not path.exists():
            return
        store = self._open_store()
        installed = store.get_meta(_DIGEST)
        try:
            mapped, status = _mapped(path)
            digest = installed
            if digest is not None and status == store.get_meta(_STATUS):
                bundle = self._decoded(signed_payload(mapped, source=str(path)), str(path))
            else:  # changed since it was installed, or installed before status records
                bundle, digest = self._verified(mapped, str(path))
        except (SignatureError, DataError, ReleaseError, OSError) as error:
            self._release_error = (
                error if isinstance(error, StamenError) else ReleaseError(f"{path}: {error}")
            )
            _log.warning("%s: installed release ignored (%s); apply a release again", path, error)
            return
        highest = self._highest()
        if bundle.release < highest or (bundle.release == highest and digest != installed):
            self._release_error = ReleaseError(
                f"{path}: installed release {bundle.release} is not the release {highest} "
                "this device last installed; ignored"
            )
            _log.warning("%s", self._release_error)
            return
        derived = read_derived(store.get_meta(_CACHE), digest, self.folder)
        cache = dict(derived.arrays)
        try:
            self._serving = ServedRelease(bundle, digest, cache)
        except (StamenError, ValueError) as error:  # e.g. its model needs torch, now absent
            self._release_error = (
                error
                if isinstance(error, StamenError)
                else ReleaseError(f"{path}: release {bundle.release} cannot be served: {error}")
            )
            _log.warning("%s: installed release not served (%s)", path, error)
            return
        updates = {}
        if cache.keys() != derived.arrays.keys():  # derived now: kept for the next open
            updates[_CACHE] = stage(self.folder, digest, cache, derived.files).install()
        if digest == installed and status != store.get_meta(_STATUS):
            updates[_STATUS] = status  # verified now: the next open need not again
        if updates:
            store.set_meta(updates)
        self._refresh()

    @property
    def release_error(self) -> StamenError | None:
        """Why the installed release file was not served when the device opened (damaged,
        tampered, not the release this device last installed, or one this installation
        cannot serve, such as a two-tower release once torch is gone), else ``None``. The
        device then recommends nothing until a release is applied again (the same
        release may be re-applied), which clears this."""
        return self._release_error

    def _highest(self) -> int:
        raw = self._open_store().get_meta(_HIGHEST)
        return -1 if raw is None else int(raw.decode())

    def _verified(self, data: bytes | memoryview, source: str) -> tuple[ReleaseBundle, bytes]:
        payload, digest = open_signed_with_sha256(data, public_key=self._release_key, source=source)
        return self._decoded(payload, source), digest

    def _decoded(self, payload: memoryview, source: str) -> ReleaseBundle:
        bundle = ReleaseBundle.decode(payload, source=source)
        try:
            model_class(bundle.model)
        except ValueError as error:  # an unknown model, or one whose library is absent
            raise ReleaseError(
                f"{source}: model {bundle.model!r} is not one this device serves ({error})"
            ) from None
        return bundle

    def apply_release(
        self,
        bundle: bytes | str | os.PathLike[str],
        *,
        link: bool = False,
        migrate: bool = False,
    ) -> ReleaseInfo:
        """Verify and install a signed release (a file path or its bytes).

        The device keeps its own copy of the file. With ``link=True`` (a path only) it
        hard-links the file instead, where the file system allows: for files that are
        replaced, never rewritten in place, such as the server's ``release-NNNNNN.stamen``
        (simulations share one release among many devices this way). Re-applying the
        installed release changes nothing. Verifying the release and building what it
        serves happen outside the device's lock: ``recommend`` and ``record`` on other
        threads go on with the installed release until the new one is swapped in.

        The first release pins its identity (publisher app and catalogue,
        ``ReleaseBundle.identity``) and model kind; a release of another is refused
        unless ``migrate=True``, which installs it whatever its number and pins it in
        their place (the person's events stay; what the old catalogue alone knew no
        longer counts). A pin made from a release without identity is completed by the
        first release of that model kind that has one. Whatever is refused, the installed
        release stays.

        Raises:
            SignatureError: unsigned, tampered, or signed by another key than the pinned.
            BundleError: signed but not a readable bundle.
            ForeignReleaseError: another publisher app, catalogue or model kind than the
                pinned one (without ``migrate``).
            RollbackError: older than the newest release this device installed.
            ReleaseError: same number as the installed one with other contents, or a
                model this device does not serve.
        """
        installed = self._apply(bundle, link=link, migrate=migrate, only_newer=False)
        assert installed is not None
        return installed

    def apply_if_newer(
        self,
        source: bytes | str | os.PathLike[str],
        *,
        link: bool = False,
        timeout: float = 30.0,
        context: ssl.SSLContext | None = None,
    ) -> ReleaseInfo | None:
        """Install ``source`` (a release file, its bytes, a releases folder, whose
        ``latest`` pointer names the file, or the ``http(s)://`` URL of such a folder on
        a static web server) when it is newer than every release this device installed;
        otherwise do nothing and return ``None``. What :meth:`apply_release` refuses (a
        bad signature, a foreign release) is refused here too. A URL is read by
        :func:`stamen.client.device.fetch.fetch_newest` (``timeout`` seconds per request,
        ``context`` for HTTPS with the publisher's own CA); a release its name says is not
        newer is not downloaded.

        Raises:
            ReleaseError: as :meth:`apply_release`, and a URL that cannot be fetched.
        """
        if is_url(source):
            with self._lock:
                highest = self._highest()
            fetched = fetch_newest(
                str(source), newer_than=highest, timeout=timeout, context=context
            )
            if fetched is None:
                return None
            return self._apply(fetched[1], link=False, migrate=False, only_newer=True)
        if not isinstance(source, bytes | bytearray | memoryview) and Path(source).is_dir():
            newest = latest_release(source)
            if newest is None:
                raise ReleaseError(f"{source}: no 'latest' pointer; not a releases folder")
            source = newest
        return self._apply(source, link=link, migrate=False, only_newer=True)

    def _apply(
        self,
        bundle: bytes | str | os.PathLike[str],
        *,
        link: bool,
        migrate: bool,
        only_newer: bool,
    ) -> ReleaseInfo | None:
        path = None if isinstance(bundle, bytes | bytearray | memoryview) else Path(bundle)
        source = "release bundle" if path is None else str(path)
        # the device's own copy first (or a link): what is verified is what is installed
        staged, synced = self._stage_file(
            Path(bundle) if path is not None else bytes(bundle),  # type: ignore[arg-type]
            link=link,
        )
        derived: Staged | None = None
        try:
            mapped, _ = _mapped(staged)
            release, digest = self._verified(mapped, source)  # outside the lock: the slow part
            with self._lock:
                if only_newer and release.release <= self._highest():
                    return None
                if self._check(release, digest, source, migrate=migrate):
                    return self.release  # already installed
            cache: dict[str, np.ndarray] = {}
            serving = ServedRelease(release, digest, cache)  # before installing: it may refuse
            serving.index.warm()  # not in the first recommend on the new release
            derived = stage(self.folder, digest, cache, {})  # large arrays written, synced
            synced()
            with self._lock:  # checked again: another thread may have installed meanwhile
                store = self._open_store()
                if only_newer and release.release <= self._highest():
                    return None
                if self._check(release, digest, source, migrate=migrate):
                    return self.release
                installed = self.folder / RELEASE_FILE
                retired = _keep_alive(installed)
                os.replace(staged, installed)
                store.set_meta(
                    {
                        _HIGHEST: str(release.release).encode(),
                        _DIGEST: digest,
                        _PINNED: _pin(release),
                        _STATUS: file_status(os.stat(installed)),
                        _CACHE: derived.install(),
                    }
                )
                previous, self._serving, self._release_error = self._serving, serving, None
                self._refresh()
                info = self.release
            # let the replaced release go outside the lock, its file kept by a link until
            # it is unmapped, then removed: freeing a large file's blocks takes tens of
            # milliseconds (benchmarks/device_concurrency.py), which neither the lock nor
            # the unmapping should wait for
            del previous
            if retired is not None:
                retired.unlink(missing_ok=True)
            prune(self.folder, derived.names())  # the replaced release's
            return info
        finally:
            staged.unlink(missing_ok=True)  # gone once renamed into place
            if derived is not None:
                derived.discard()  # written for a release not installed

    def _check(self, release: ReleaseBundle, digest: bytes, source: str, *, migrate: bool) -> bool:
        """Refuse ``release`` (raising) or say whether it is the one installed already;
        under the lock."""
        store = self._open_store()
        foreign = _foreign(store.get_meta(_PINNED), release)
        if foreign and not migrate:
            raise ForeignReleaseError(
                f"{source}: {foreign}; refused (apply_release(..., migrate=True) moves the "
                "device to it)"
            )
        if foreign:
            return False  # a migration: its own numbering starts here
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
        return self._serving is not None and self._serving.digest == digest

    def _stage_file(
        self, source: bytes | bytearray | memoryview | Path, *, link: bool
    ) -> tuple[Path, Callable[[], None]]:
        """The release file, ready to be renamed into place, named as ``stamen_files``
        expects, and a call that returns once its bytes are on disk: a hard link to
        ``source`` where asked and possible (the file is verified again whenever it
        changes), else an owner-only copy, whose fsync runs on a thread meanwhile."""
        if isinstance(source, bytes | bytearray | memoryview):
            return write_staged(self.folder / RELEASE_FILE, bytes(source), mode=0o600), _done
        if link:
            staged = self.folder / f".{RELEASE_FILE}.{secrets.token_hex(8)}.tmp"
            try:
                os.link(source, staged)
                return staged, _done
            except OSError:
                staged.unlink(missing_ok=True)
        handle, name = tempfile.mkstemp(dir=self.folder, prefix=f".{RELEASE_FILE}.", suffix=".tmp")
        os.close(handle)  # created owner-only; copyfile keeps the mode of a file it reuses
        staged = Path(name)
        try:
            shutil.copyfile(source, staged)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        return staged, _fsync_meanwhile(staged)


def _keep_alive(path: Path) -> Path | None:
    """A hard link to ``path`` named as ``stamen_files`` expects (``None``: no file there,
    or the file system has no links), so that replacing ``path`` leaves its blocks to be
    freed when the link is removed."""
    if not path.exists():
        return None
    link = path.with_name(f".{RELEASE_FILE}.{secrets.token_hex(8)}.tmp")
    try:
        os.link(path, link)
    except OSError:
        return None
    return link


def _done() -> None:
    """Nothing to wait for."""


def _fsync_meanwhile(path: Path) -> Callable[[], None]:
    """Start fsyncing ``path`` on a thread; the returned call waits for it (raising what
    it raised). A release's bytes reach the disk while the device verifies them."""
    failed: list[BaseException] = []

    def sync() -> None:
        try:
            handle = os.open(path, os.O_RDONLY)
            try:
                os.fsync(handle)
            finally:
                os.close(handle)
        except BaseException as error:  # re-raised by wait()
            failed.append(error)

    thread = threading.Thread(target=sync, name="stamen-release-fsync", daemon=True)
    thread.start()

    def wait() -> None:
        thread.join()
        if failed:
            raise failed[0]

    return wait


def _mapped(path: Path) -> tuple[memoryview, bytes]:
    """``path`` memory-mapped copy-on-write, and its status record as it was when mapped
    (:func:`~stamen.client.device.derived.file_status`)."""
    with path.open("rb") as handle:
        status = os.fstat(handle.fileno())
        if status.st_size == 0:
            return memoryview(b""), file_status(status)  # an empty file cannot be mapped
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
        return memoryview(mapped), file_status(status)  # the view keeps the map open


def _pin(release: ReleaseBundle) -> bytes:
    """What a device pins of its release: the model kind and the identity."""
    identity = None if release.identity is None else release.identity.to_json()
    return json.dumps({"model": release.model, "identity": identity}).encode()


def _foreign(pinned: bytes | None, release: ReleaseBundle) -> str | None:
    """Why ``release`` is not of the pinned publisher, catalogue and model (``None``: it
    is, or nothing is pinned yet)."""
    if pinned is None:
        return None
    pin = json.loads(pinned)
    if pin["model"] != release.model:
        return f"a {release.model!r} release, where this device serves {pin['model']!r}"
    if pin["identity"] is None:
        return None  # pinned before identities: the model kind is all there is to check
    if release.identity is None:
        return "a release without identity, where this device pins " + _named(pin["identity"])
    if release.identity.to_json() != pin["identity"]:
        return f"a release of {_named(release.identity.to_json())}, where this device pins " + (
            _named(pin["identity"])
        )
    return None


def _named(identity: dict[str, str]) -> str:
    return f"app {identity['app']!r}, catalogue {identity['catalog']!r}"
