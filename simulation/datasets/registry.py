"""The registry of named data sets, and where they are found on disk.

``DATASETS`` maps a name to its loader, its official archive and the folder that archive
extracts to; ``load_dataset`` dispatches through it. Real data for tests and benchmarks
lives outside the repository (``default_data_dir()``: ``$STAMEN_DATA_DIR`` or
``../shared/data`` beside the repository root), because the licences forbid
redistributing it.

Archive SHA-256 digests, recorded only where a published value was found:

* ml-100k, ml-1m, ml-20m, ml-25m, ml-latest-small: TensorFlow Datasets,
  ``tensorflow/datasets`` ``tensorflow_datasets/url_checksums/movielens.txt``; the same
  values appear in OmniRec (``ISG-Siegen/OmniRec``,
  ``src/omnirec/data_loaders/movielens_small.py`` and ``movielens_large.py``).
* ml-10m: OmniRec, ``src/omnirec/data_loaders/movielens_small.py`` (archive of
  65,566,137 bytes; other public projects quote the same digest next to the official
  MD5 ``ce571fd55effeba0271552578f2648bd``).
* lastfm-2k: OmniRec, ``src/omnirec/data_loaders/hetrec_lastfm.py``; other public
  projects that checked the archive quote the same digest.
* ml-32m: none found (GroupLens publishes only an MD5). Downloading it needs an explicit
  ``expected_sha256``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stamen.errors import ConfigError, DataError
from stamen.models.schema import Dataset
from stamen.simulation.datasets.download import Archive, default_cache_dir, ensure_archive
from stamen.simulation.datasets.lastfm import load_lastfm_2k
from stamen.simulation.datasets.movielens import (
    load_movielens_100k,
    load_movielens_csv,
    load_movielens_dat,
)

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "default_data_dir",
    "find_local",
    "load_dataset",
    "locate",
]

_MOVIELENS = "https://files.grouplens.org/datasets/movielens/"
_HETREC = "https://files.grouplens.org/datasets/hetrec2011/"


@dataclass(frozen=True)
class DatasetSpec:
    """A named data set: the loader reading its extracted folder, and its archive (whose
    ``folder`` is also the folder name looked for under ``default_data_dir()``)."""

    name: str
    loader: Callable[[Path], Dataset]
    archive: Archive


def _spec(
    name: str,
    loader: Callable[[Path], Dataset],
    url: str,
    sha256: str | None,
    folder: str,
    *,
    flat: bool = False,
) -> DatasetSpec:
    return DatasetSpec(name, loader, Archive(url, sha256, folder, flat=flat))


def _csv(name: str) -> Callable[[Path], Dataset]:
    return functools.partial(load_movielens_csv, name=name)


def _dat(name: str) -> Callable[[Path], Dataset]:
    return functools.partial(load_movielens_dat, name=name)


#: Every loadable data set by name. Digests: see the module docstring for sources.
DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        _spec(
            "ml-100k",
            load_movielens_100k,
            _MOVIELENS + "ml-100k.zip",
            "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",  # TFDS
            "ml-100k",
        ),
        _spec(
            "ml-1m",
            _dat("ml-1m"),
            _MOVIELENS + "ml-1m.zip",
            "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",  # TFDS
            "ml-1m",
        ),
        _spec(
            "ml-10m",
            _dat("ml-10m"),
            _MOVIELENS + "ml-10m.zip",
            "813c411ccb6122564edfe752e7f80c4dcc5aa25fa94c93622f6877a7ba252862",  # OmniRec
            "ml-10M100K",
        ),
        _spec(
            "ml-latest-small",
            _csv("ml-latest-small"),
            _MOVIELENS + "ml-latest-small.zip",
            "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",  # TFDS
            "ml-latest-small",
        ),
        _spec(
            "ml-20m",
            _csv("ml-20m"),
            _MOVIELENS + "ml-20m.zip",
            "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3",  # TFDS
            "ml-20m",
        ),
        _spec(
            "ml-25m",
            _csv("ml-25m"),
            _MOVIELENS + "ml-25m.zip",
            "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa",  # TFDS
            "ml-25m",
        ),
        _spec("ml-32m", _csv("ml-32m"), _MOVIELENS + "ml-32m.zip", None, "ml-32m"),
        _spec(
            "lastfm-2k",
            load_lastfm_2k,
            _HETREC + "hetrec2011-lastfm-2k.zip",
            "6738f48195667ff03caaab4d32ca9a3133d8cc026b7c3cdaf6ce1010e913c59c",  # OmniRec
            "hetrec2011-lastfm-2k",
            flat=True,
        ),
    )
}


def _spec_of(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join([*sorted(DATASETS), "synthetic (generated)"])
        raise ConfigError(f"unknown data set {name!r}; known: {known}") from None


def default_data_dir() -> Path:
    """Folder holding extracted real data sets: ``$STAMEN_DATA_DIR`` when set, else
    ``../shared/data`` relative to the repository root."""
    env = os.environ.get("STAMEN_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def find_local(name: str, data_dir: Path | None = None) -> Path | None:
    """The extracted folder of data set ``name`` under ``data_dir`` (default
    ``default_data_dir()``), e.g. ``ml-100k`` or ``hetrec2011-lastfm-2k``; ``None`` when
    it is not there. Raises ``ConfigError`` for an unknown name."""
    folder = (data_dir if data_dir is not None else default_data_dir()) / _spec_of(
        name
    ).archive.folder
    return folder if folder.is_dir() else None


def locate(
    name: str,
    data_dir: Path | None = None,
    *,
    cache_dir: Path | None = None,
    say: Callable[[str], None] | None = None,
) -> Path:
    """The extracted folder of data set ``name``: under ``data_dir`` (default
    ``default_data_dir()``), else in the download cache (``cache_dir``, default
    ``~/.cache/stamen``), downloading and verifying the official archive there once
    (``say`` is told first). Raises ``DataError`` saying where it looked and what to do
    when neither place has it and the download fails: never another data set instead."""
    root = data_dir if data_dir is not None else default_data_dir()
    local = find_local(name, root)
    if local is not None:
        return local
    archive = _spec_of(name).archive
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    if say is not None:
        say(f"{name}: no folder {archive.folder} under {root}; fetching {archive.url} into {cache}")
    try:
        return ensure_archive(archive, cache)
    except (OSError, DataError) as err:
        raise DataError(
            f"data set {name!r} not found: no folder {archive.folder!r} under {root} (the data "
            f"dir: --data-dir, data-dir, $STAMEN_DATA_DIR) nor in the download cache {cache}, "
            f"and fetching it failed ({err}). Download {archive.url}, extract it into {root} "
            "(or point --data-dir at the folder holding it) and run again; --dataset "
            "synthetic runs on generated data, --data FILE --user-col … --item-col … on your "
            "own file"
        ) from err


def load_dataset(
    name: str,
    path: str | Path | None = None,
    *,
    cache_dir: Path | None = None,
    expected_sha256: str | None = None,
) -> Dataset:
    """Load data set ``name`` (a key of ``DATASETS``) from ``path``, the folder holding
    its extracted files. Without ``path`` the official archive is downloaded into
    ``cache_dir`` (default ``~/.cache/stamen``), verified against its SHA-256 (or
    ``expected_sha256`` where none is published) and extracted, once."""
    spec = _spec_of(name)
    if path is None:
        path = ensure_archive(spec.archive, cache_dir, expected_sha256=expected_sha256)
    return spec.loader(Path(path))
