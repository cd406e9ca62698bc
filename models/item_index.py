"""An approximate top-n index over a large item table, for the device's collaborative scores.

The device scores a user vector ``v`` against every item, ``table @ v + bias``, and keeps
the best: maximum inner product search with a per-item bias. Below :data:`EXACT_BELOW`
items that exact scan is already fast (a few milliseconds on one core) and callers should
not build an index. Above it, :class:`ApproximateIndex` finds the best ``n`` without
reading the whole table:

- the rows ``[x, b]`` (the bias folded in as one more column; the query is ``[v, 1]``,
  padded with zeros to a multiple of 4 wide) are coded by 4-bit product quantization, two
  dimensions per sub-quantizer, scanned with SIMD lookup tables (faiss
  ``IndexPQFastScan``, inner product): about 17 bytes an item at 64 dimensions;
- its best ``candidates`` (default :data:`DEFAULT_CANDIDATES`) are re-scored exactly from
  the table the caller holds, and the best ``n`` of those returned, with their exact
  scores, best first.

Chosen by measurement (``benchmarks/ann.py``; ``benchmarks/results/ann*.md``): at a
million Gaussian 64-dimensional items on one core, HNSW graphs over the same rows (faiss
``IndexHNSWFlat`` M=32, usearch connectivity 16) took 7 to 19 minutes to build on two
cores and reached recall@100 0.93 (faiss, efSearch 1600, p50 10 ms) and 0.79 (usearch, 18
ms); the quantized scan with 4,000 candidates re-scored reached 0.96 at p50 4.8 ms, built
in a few seconds, its file 17 MB beside the table's 256 MB.

A publisher builds the index and ships its bytes in the release
(``ReleaseBundle.item_index``, about 17 bytes an item); a device reads them back
(:meth:`ApproximateIndex.from_bytes`: one copy of the codes, a few milliseconds at a
million items) and re-scores from the table it serves (float32 or int8). faiss is imported
only when an index is built or read (about 50 to 75 ms after ``numpy``); without it those
raise :class:`~stamen.errors.IndexLibraryMissing` (``pip install faiss-cpu``, the ``ann``
extra).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stamen.errors import IndexLibraryMissing
from stamen.models.quantize import ItemTable

__all__ = [
    "DEFAULT_CANDIDATES",
    "EXACT_BELOW",
    "PIP_PACKAGE",
    "ApproximateIndex",
    "default_candidates",
    "exact_top",
]

EXACT_BELOW = 100_000
"""Catalogue size (items) below which callers should score every item exactly
(:func:`exact_top`) rather than build an :class:`ApproximateIndex`: measured on one core,
the exact ``numpy`` path takes about 3 ms at 100,000 items (0.9 ms at 30,000), what the
index takes at a million; it grows with the catalogue (9 ms at 300,000, 30 ms at a
million: ``benchmarks/results/ann.md``)."""

DEFAULT_CANDIDATES = 4000
"""The most of the quantized scan's best items :meth:`ApproximateIndex.search` re-scores
exactly by default (at least ``n``): recall@100 0.96 against exact at a million Gaussian
items (0.95 at 3,000); recall falls as the catalogue grows past that with it fixed."""


def default_candidates(items: int) -> int:
    """How many candidates a search of ``items`` re-scores by default: one in a hundred,
    between 1,000 and :data:`DEFAULT_CANDIDATES` (at 100,000 Gaussian items 1,000 reach
    recall@100 0.967 in 0.78 ms p99 where 4,000 take 1.81 ms; ``benchmarks/ann.py``)."""
    return int(min(max(items // 100, 1000), DEFAULT_CANDIDATES))


PIP_PACKAGE = "faiss-cpu"
"""The pip package that provides the library the index is built on."""

_TRAIN = 100_000  # items the quantizer is trained on, at most
_DIMS_PER_SUBQUANTIZER = 2
_NBITS = 4


def _faiss() -> Any:
    """The faiss module, imported on first use."""
    try:
        import faiss
    except ImportError as error:
        raise IndexLibraryMissing(
            f"the approximate item index needs faiss: pip install {PIP_PACKAGE}"
        ) from error
    return faiss


def _width(dim: int) -> int:
    """The coded row's width for ``dim`` factors: ``dim + 1`` (the bias) rounded up to a
    multiple of 4 (two dimensions per sub-quantizer, an even number of sub-quantizers)."""
    return -(-(dim + 1) // 4) * 4


def _check(table: ItemTable, bias: np.ndarray) -> None:
    """Raise ``ValueError`` unless ``bias`` has one value per row of ``table``."""
    if bias.shape != (len(table),):
        raise ValueError(f"bias must be ({len(table)},) (got {bias.shape})")


def _table(table: ItemTable | np.ndarray) -> ItemTable:
    return table if isinstance(table, ItemTable) else ItemTable.dense(np.asarray(table))


def exact_top(
    table: ItemTable | np.ndarray, bias: np.ndarray, vector: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """The exact best ``n`` rows of ``table @ vector + bias`` (all rows when ``n`` is at
    least their number) and their scores, best first: rows int64, scores float32."""
    vector = np.asarray(vector, np.float32)
    scores = (_table(table).scores(vector[None])[0] + bias).astype(np.float32, copy=False)
    return _best(np.arange(len(scores), dtype=np.int64), scores, n)


def _best(rows: np.ndarray, scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``n`` of ``rows`` by ``scores``, best first (ties by row)."""
    if n <= 0:
        return rows[:0], scores[:0]
    if n < len(scores):
        keep = np.argpartition(-scores, n - 1)[:n]
        rows, scores = rows[keep], scores[keep]
    order = np.lexsort((rows, -scores))
    return rows[order], scores[order]


class ApproximateIndex:
    """Approximate best-``n`` search of ``table @ v + bias`` (see the module docstring):
    a 4-bit product-quantized scan for candidates, re-scored exactly from the table.

    Make one with :meth:`build` or :meth:`from_bytes`; the table (an ``ItemTable``, float32
    or int8, or a float array) and biases it re-scores from are the caller's, not copied:
    a memory-mapped table stays mapped."""

    def __init__(
        self,
        index: Any,
        table: ItemTable | np.ndarray,
        bias: np.ndarray,
        candidates: int | None = None,
        threads: int = 1,
    ) -> None:
        """Wrap faiss ``index`` (already coding the rows of ``table`` and ``bias``);
        :meth:`build` and :meth:`from_bytes` are the public ways in."""
        table = _table(table)
        _check(table, bias)
        if index.ntotal != len(table) or index.d != _width(table.dim):
            raise ValueError(
                f"the index codes {index.ntotal} rows {index.d} wide; the table has"
                f" {len(table)} rows of {table.dim} (needs {_width(table.dim)} wide)"
            )
        if candidates is None:
            candidates = default_candidates(len(table))
        if candidates < 1 or threads < 1:
            raise ValueError(
                f"candidates and threads must be at least 1 (got {candidates}, {threads})"
            )
        self._index = index
        self.table = table
        """The item table the candidates are re-scored from."""
        self.bias = np.asarray(bias, np.float32)
        """The ``(n,)`` item biases."""
        self.candidates = candidates
        """How many of the scan's best items a search re-scores exactly (at least ``n``)."""
        self.threads = threads
        """faiss (OpenMP) threads a search runs on: one, as on the device, by default (set
        for the call and restored after; OpenMP's setting is process-wide)."""

    def __len__(self) -> int:
        """The number of items indexed."""
        return len(self.table)

    @classmethod
    def build(
        cls,
        table: ItemTable | np.ndarray,
        bias: np.ndarray,
        *,
        candidates: int | None = None,
        threads: int | None = None,
        seed: int = 0,
    ) -> ApproximateIndex:
        """Code every row of ``table`` with its ``bias``: train the quantizer on up to
        100,000 rows drawn by ``seed``, then code all of them, with ``threads`` threads
        (``None``: faiss' default, every core; on a busy machine one thread is faster:
        2.4 s against 20 s on two loaded cores at a million items)."""
        faiss = _faiss()
        table = _table(table)
        _check(table, bias)
        rows = _rows(table, bias)
        index = faiss.IndexPQFastScan(
            rows.shape[1],
            rows.shape[1] // _DIMS_PER_SUBQUANTIZER,
            _NBITS,
            faiss.METRIC_INNER_PRODUCT,
        )
        sample = np.random.default_rng(seed).permutation(len(rows))[:_TRAIN]
        previous = faiss.omp_get_max_threads()
        if threads is not None:
            faiss.omp_set_num_threads(threads)
        try:
            index.train(rows[np.sort(sample)])
            index.add(rows)
        finally:
            faiss.omp_set_num_threads(previous)
        return cls(index, table, bias, candidates)

    def to_bytes(self) -> np.ndarray:
        """The index (the quantizer and the codes, not the table) as ``uint8`` bytes, as a
        release carries it."""
        return np.asarray(_faiss().serialize_index(self._index), np.uint8)

    @classmethod
    def from_bytes(
        cls,
        data: np.ndarray,
        table: ItemTable | np.ndarray,
        bias: np.ndarray,
        *,
        candidates: int | None = None,
    ) -> ApproximateIndex:
        """The index :meth:`to_bytes` wrote, for ``table`` and ``bias`` (the rows it was
        built from).

        Raises:
            IndexLibraryMissing: faiss is not installed.
            ValueError: the bytes are not an index, or it does not fit the table.
        """
        faiss = _faiss()
        try:
            index = faiss.deserialize_index(np.ascontiguousarray(data, np.uint8))
        except RuntimeError as error:  # faiss raises RuntimeError on bad input
            raise ValueError(f"not a faiss index ({str(error).splitlines()[0]})") from None
        return cls(index, table, bias, candidates)

    def search(self, vector: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The approximate best ``n`` items for user vector ``vector`` ``(dim,)`` (every
        item when ``n`` is at least their number): rows int64 and their exact scores
        ``table[rows] @ vector + bias[rows]`` float32, best first (ties by row)."""
        vector = np.asarray(vector, np.float32)
        if vector.shape != (self.table.dim,):
            raise ValueError(f"vector must be ({self.table.dim},) (got {vector.shape})")
        if n <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if n >= len(self):
            return exact_top(self.table, self.bias, vector, n)
        query = np.zeros((1, self._index.d), np.float32)
        query[0, : len(vector)], query[0, len(vector)] = vector, 1.0
        faiss = _faiss()
        previous = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(self.threads)
        try:
            found = self._index.search(query, min(max(self.candidates, n), len(self)))
        finally:
            faiss.omp_set_num_threads(previous)
        rows = found[1][0]
        rows = rows[rows >= 0].astype(np.int64)
        return _best(rows, self.scores(rows, vector), n)

    def scores(self, rows: np.ndarray, vector: np.ndarray) -> np.ndarray:
        """The exact scores ``table[rows] @ vector + bias[rows]`` (float32)."""
        rows = np.asarray(rows, np.int64)
        picked = self.table.rows(rows) @ np.asarray(vector, np.float32) + self.bias[rows]
        return picked.astype(np.float32, copy=False)


def _rows(table: ItemTable, bias: np.ndarray) -> np.ndarray:
    """``[x, b]`` rows padded with zeros to the coded width."""
    rows = np.zeros((len(table), _width(table.dim)), np.float32)
    block = 65536
    for start in range(0, len(table), block):
        stop = min(start + block, len(table))
        rows[start:stop, : table.dim] = table.rows(np.arange(start, stop))
    rows[:, table.dim] = bias
    return rows
