"""Data sets: loaders for MovieLens and HetRec Last.fm-2K files, the download cache for
their official archives, and a synthetic generator.

``load_dataset(name, path)`` reads an extracted folder (or downloads, verifies and
extracts the official archive when ``path`` is ``None``) through the ``DATASETS``
registry; ``locate`` finds a named set's folder or says where it looked and what to do.
``load_interactions_file`` reads a researcher's own CSV, TSV, JSON lines or Parquet file
(``DataFileSettings``). Every loader returns a ``stamen.models.schema.Dataset`` and raises
``DataFormatError`` naming the file, line and field of the first malformed input.
"""

from stamen.simulation.datasets.download import (
    Archive,
    default_cache_dir,
    ensure_archive,
    fetch_url,
    file_sha256,
)
from stamen.simulation.datasets.interactions_file import (
    DataFileSettings,
    FileReport,
    LoadedFile,
    load_interactions_file,
)
from stamen.simulation.datasets.lastfm import load_lastfm_2k
from stamen.simulation.datasets.movielens import (
    ML100K_GENRES,
    load_movielens_100k,
    load_movielens_csv,
    load_movielens_dat,
)
from stamen.simulation.datasets.registry import (
    DATASETS,
    DatasetSpec,
    default_data_dir,
    find_local,
    load_dataset,
    locate,
)
from stamen.simulation.datasets.synthetic import generate_synthetic

__all__ = [
    "Archive",
    "DATASETS",
    "DataFileSettings",
    "DatasetSpec",
    "FileReport",
    "LoadedFile",
    "ML100K_GENRES",
    "default_cache_dir",
    "default_data_dir",
    "ensure_archive",
    "fetch_url",
    "file_sha256",
    "find_local",
    "generate_synthetic",
    "load_dataset",
    "load_interactions_file",
    "load_lastfm_2k",
    "load_movielens_100k",
    "load_movielens_csv",
    "load_movielens_dat",
    "locate",
]
