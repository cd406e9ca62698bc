"""Download, verify and unpack an official data set archive into a local cache.

An archive is fetched with ``urllib`` (any URL it opens, ``file://`` included) to a
temporary file beside its destination, hashed while it streams, and renamed into place
only when its SHA-256 matches; it is then extracted to a temporary folder that is renamed
into place in one step, carrying a marker with the archive's digest. A later call finds
the verified folder and fetches nothing. An archive without a known digest is never
fetched unless the caller supplies one: a checksum is never skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from stamen.errors import ChecksumError, DataError

__all__ = [
    "Archive",
    "MARKER",
    "default_cache_dir",
    "ensure_archive",
    "fetch_url",
    "file_sha256",
]

#: File written into an extracted folder, holding the SHA-256 of its verified archive.
MARKER = ".stamen-sha256"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Archive:
    """An official zip archive: its URL, its published SHA-256 (``None`` when none is
    known), the folder its files extract to, and whether the zip stores them inside that
    folder (``flat=False``, MovieLens) or at its root (``flat=True``, HetRec)."""

    url: str
    sha256: str | None
    folder: str
    flat: bool = False

    @property
    def filename(self) -> str:
        """The archive's file name, the last part of its URL."""
        return PurePosixPath(self.url).name


def default_cache_dir() -> Path:
    """Where downloads go unless told otherwise: ``~/.cache/stamen``."""
    return Path.home() / ".cache" / "stamen"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_url(url: str, dest: Path) -> str:
    """Stream ``url`` into ``dest`` with a progress bar and return its hex SHA-256."""
    digest = hashlib.sha256()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with (
        urllib.request.urlopen(url, timeout=60) as response,  # noqa: S310 (fixed URLs)
        dest.open("wb") as out,
        Progress(*columns, transient=True) as progress,
    ):
        size = response.headers.get("Content-Length")
        task = progress.add_task(
            f"downloading {PurePosixPath(url).name}", total=int(size) if size else None
        )
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            digest.update(chunk)
            progress.advance(task, len(chunk))
    return digest.hexdigest()


def _read_marker(folder: Path) -> str | None:
    try:
        return (folder / MARKER).read_text(encoding="ascii").strip()
    except OSError:
        return None


def _safe_members(zf: zipfile.ZipFile, archive: Path) -> list[zipfile.ZipInfo]:
    members = zf.infolist()
    for member in members:
        parts = PurePosixPath(member.filename).parts
        if member.filename.startswith("/") or ".." in parts or ":" in member.filename:
            raise DataError(f"{archive}: unsafe member path {member.filename!r}; not extracting")
    return members


def _download(
    archive: Archive, target: Path, expected: str, fetch: Callable[[str, Path], str]
) -> None:
    """Fetch to a temporary file beside ``target``, check the digest, rename into place."""
    handle, tmp_name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".part"
    )
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        try:
            actual = fetch(archive.url, tmp)
        except OSError as exc:  # URLError, timeouts, disk full
            raise DataError(f"{archive.url}: download failed ({exc})") from exc
        if actual != expected:
            raise ChecksumError(
                f"{archive.url}: SHA-256 {actual} differs from the expected {expected}; the "
                "download is corrupt or the file changed upstream, and was discarded"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _extract(archive: Archive, zip_path: Path, folder: Path, digest: str) -> None:
    """Extract into a temporary folder, write the marker, rename into place."""
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                zf.extractall(tmp, members=_safe_members(zf, zip_path))
        except zipfile.BadZipFile as exc:
            raise DataError(f"{zip_path}: not a readable zip archive ({exc})") from exc
        source = tmp if archive.flat else tmp / archive.folder
        if not source.is_dir():
            raise DataError(f"{zip_path}: the archive holds no folder {archive.folder!r}")
        (source / MARKER).write_text(digest + "\n", encoding="ascii")
        if folder.exists():  # stale or unverified: ours to replace
            shutil.rmtree(folder)
        try:
            os.replace(source, folder)
        except OSError:
            if _read_marker(folder) != digest:  # not a concurrent twin: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_archive(
    archive: Archive,
    cache_dir: Path | None = None,
    *,
    expected_sha256: str | None = None,
    fetch: Callable[[str, Path], str] | None = None,
) -> Path:
    """Return the extracted folder of ``archive`` under ``cache_dir`` (default
    ``default_cache_dir()``), downloading and extracting it first if needed.

    ``expected_sha256`` overrides the archive's published digest; one of the two must
    exist, else ``DataError`` (nothing is fetched unverified). A digest mismatch raises
    ``ChecksumError`` and leaves nothing behind. ``fetch(url, dest) -> sha256`` defaults
    to ``fetch_url``.
    """
    expected = (expected_sha256 or archive.sha256 or "").strip().lower()
    if not expected:
        raise DataError(
            f"no published SHA-256 is known for {archive.url}, so Stamen will not download it "
            "unverified. Pass expected_sha256='<hex digest>' (load_dataset(..., "
            "expected_sha256=...)) after checking the archive yourself, or download and "
            "extract it yourself and pass its folder as path=."
        )
    cache = (cache_dir if cache_dir is not None else default_cache_dir()).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    folder = cache / archive.folder
    if folder.is_dir() and _read_marker(folder) == expected:
        return folder
    zip_path = cache / archive.filename
    if not (zip_path.is_file() and file_sha256(zip_path) == expected):
        with contextlib.suppress(FileNotFoundError):
            zip_path.unlink()
        _download(archive, zip_path, expected, fetch or fetch_url)
    _extract(archive, zip_path, folder, expected)
    return folder
