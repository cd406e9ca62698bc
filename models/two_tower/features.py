"""Public content features of the catalogue, the item tower's input.

Every column comes from the release's catalogue alone (no interaction data), so the server
and every device compute the same matrix: genres (or tags) multi-hot, the release year as
a one-hot decade bucket (one column for "unknown"), and the title's word tokens hashed
into ``title_buckets`` columns (a stable CRC-32 hash, not Python's salted ``hash``), each
group scaled to unit L2 norm per item so no group dominates by its number of columns.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

from stamen.models.bundle import ReleaseCatalog

__all__ = ["YEAR_EDGES", "feature_width", "item_features"]

#: Decade edges of the release-year buckets; years before the first share its bucket.
YEAR_EDGES = tuple(range(1930, 2021, 10))

_TOKEN = re.compile(r"[a-z0-9]+")


def feature_width(n_genres: int, title_buckets: int) -> int:
    """Columns of :func:`item_features` for a catalogue with ``n_genres`` genre names."""
    return n_genres + len(YEAR_EDGES) + 2 + title_buckets


def _title_tokens(title: str) -> list[str]:
    """Lower-case word tokens of a title, a trailing ``(1995)`` year left out."""
    return [t for t in _TOKEN.findall(title.lower()) if not (len(t) == 4 and t.isdigit())]


def _unit_rows(block: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(block, axis=1, keepdims=True)
    return block / np.maximum(norms, 1e-12)


def item_features(catalog: ReleaseCatalog, *, title_buckets: int = 256) -> np.ndarray:
    """The ``(n_items, feature_width(...))`` float32 content matrix (see module docstring)."""
    n = len(catalog)
    genres = np.zeros((n, len(catalog.genre_names)), np.float32)
    rows = np.repeat(np.arange(n), np.diff(catalog.genre_indptr))
    genres[rows, catalog.genre_index] = 1.0
    years = np.zeros((n, len(YEAR_EDGES) + 2), np.float32)
    year = np.asarray(catalog.year)
    bucket = np.where(year > 0, 1 + np.searchsorted(YEAR_EDGES, year, side="right"), 0)
    years[np.arange(n), bucket] = 1.0
    titles = np.zeros((n, title_buckets), np.float32)
    if title_buckets:
        for i in range(n):
            for token in _title_tokens(catalog.title(i)):
                titles[i, zlib.crc32(token.encode()) % title_buckets] += 1.0
    return np.concatenate([_unit_rows(genres), years, _unit_rows(titles)], axis=1)
