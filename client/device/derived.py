"""What a device derives from its installed release and keeps, so that reopening it
derives nothing (``RecModel.serving``'s ``cache``: MF's iALS item side, the two-tower and
sequential models' item embeddings).

Small arrays travel in one record of the encrypted store: the release's SHA-256, then an
``.npz``. Arrays of :data:`LARGE_BYTES` or more (a catalogue's embeddings: 26 MB at
100,000 items) are files beside the release, ``release.stamen.<name>.npy``, memory-mapped
copy-on-write when the device opens; the record holds each file's status (device, inode,
size, modification and change times, :func:`file_status`), and a file whose status differs
is not read: the model derives that array again and the device writes it anew. Every array
here is computed from the public release alone, never from anything about the person.

A large array is written to a temporary file and synced (:func:`stage`) before the device
takes its lock; under the lock the file is only renamed into place (:meth:`Staged.install`).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DERIVED_GLOB",
    "LARGE_BYTES",
    "Derived",
    "Staged",
    "derived_path",
    "file_status",
    "prune",
    "read_derived",
    "stage",
]

LARGE_BYTES = 1 << 20
"""Arrays of at least this many bytes are kept in files, not in the store."""

DERIVED_GLOB = "release.stamen.*.npy"
"""The names of the files that hold large derived arrays, in the device's folder."""

_log = logging.getLogger("stamen.device")

_FILES = "__files__"  # the record's entry naming each file and its status
_NAME = re.compile(r"[a-z0-9_][a-z0-9_.]*\Z")


def derived_path(folder: Path, name: str) -> Path:
    """The file that holds the large derived array ``name``."""
    if not _NAME.match(name):
        raise ValueError(f"derived array name {name!r} is not a plain lower-case name")
    return folder / f"release.stamen.{name}.npy"


def file_status(status: os.stat_result) -> bytes:
    """What identifies a file's contents short of reading them: device, inode, size,
    modification and change times (a write changes the change time, which no call sets
    back)."""
    fields = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)
    return ":".join(str(f) for f in fields).encode()


@dataclass
class Derived:
    """A release's derived arrays as a device read them back: ``arrays`` (the large ones
    memory-mapped), and the status of each large one's file, as recorded."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


def read_derived(record: bytes | None, digest: bytes, folder: Path) -> Derived:
    """The arrays of a record :meth:`Staged.install` made, when it is the release
    ``digest``'s (empty otherwise: none stored, or another release's); a large array whose
    file is missing or changed since is left out."""
    if record is None or record[: len(digest)] != digest:
        return Derived()
    with np.load(io.BytesIO(record[len(digest) :]), allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files if name != _FILES}
        files = json.loads(stored[_FILES].tobytes()) if _FILES in stored.files else {}
    kept = {}
    for name, status in files.items():
        path = derived_path(folder, name)
        try:
            if file_status(os.stat(path)) == status.encode():
                array = np.load(path, mmap_mode="c", allow_pickle=False)
                if file_status(os.stat(path)) == status.encode():  # not replaced meanwhile
                    arrays[name], kept[name] = array, status
                    continue
        except (OSError, ValueError):  # gone, or not an array file
            pass
        _log.warning("%s: changed or missing since it was written; derived again", path)
    return Derived(arrays, kept)


@dataclass
class Staged:
    """Derived arrays ready to be recorded: the small ones, the large ones written to
    temporary files, and those whose files are already in place."""

    digest: bytes
    folder: Path
    small: dict[str, np.ndarray]
    written: dict[str, Path]
    kept: dict[str, str]

    def install(self) -> bytes:
        """Rename the written files into place; the record for the store (under the
        device's lock: renames only)."""
        files = dict(self.kept)
        for name, temporary in self.written.items():
            path = derived_path(self.folder, name)
            os.replace(temporary, path)
            files[name] = file_status(os.stat(path)).decode()
        self.written, self.kept = {}, files
        arrays: dict[str, Any] = dict(self.small)
        arrays[_FILES] = np.frombuffer(json.dumps(files).encode(), np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return self.digest + buffer.getvalue()

    def names(self) -> set[str]:
        """The large arrays' names."""
        return set(self.kept) | set(self.written)

    def discard(self) -> None:
        """Remove the files written and not installed."""
        for temporary in self.written.values():
            temporary.unlink(missing_ok=True)
        self.written = {}


def stage(
    folder: Path, digest: bytes, cache: Mapping[str, np.ndarray], kept: Mapping[str, str]
) -> Staged:
    """Write ``cache``'s large arrays that are not already in place (``kept``, from
    :func:`read_derived`) to synced temporary files in ``folder``."""
    small, written = {}, {}
    try:
        for name, array in cache.items():
            if array.nbytes < LARGE_BYTES:
                small[name] = array
            elif name not in kept:
                temporary = derived_path(folder, name).with_name(
                    f".release.stamen.{name}.{uuid.uuid4().hex}.tmp"
                )
                written[name] = temporary
                descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(descriptor, "wb") as handle:
                    np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
                    handle.flush()
                    os.fsync(handle.fileno())
    except BaseException:
        Staged(digest, folder, small, written, {}).discard()
        raise
    held = {name: status for name, status in kept.items() if name in cache}
    return Staged(digest, folder, small, written, held)


def prune(folder: Path, keep: set[str]) -> None:
    """Remove the large derived files not named in ``keep`` (another release's)."""
    for path in folder.glob(DERIVED_GLOB):
        name = path.name[len("release.stamen.") : -len(".npy")]
        if name not in keep:
            path.unlink(missing_ok=True)
