"""The catalogue's items x genres (or tags) matrix, as the pipeline reads it.

A 0/1 matrix in CSR form (the release's ``genre_indptr`` and ``genre_index`` columns,
viewed, never copied) with the few products the candidate generators, the ranker's
features and MMR need, in numpy alone: the serving path stays free of SciPy, whose import
costs an embedded app more than these products cost a request. Each product adds a row's
terms in the order the row lists them, as a CSR product does.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = ["GenreMatrix"]


@dataclass(frozen=True, eq=False)
class GenreMatrix:
    """Rows (items) x ``width`` columns (genres), 1 where the item has the genre."""

    indptr: np.ndarray
    indices: np.ndarray
    width: int

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns)."""
        return len(self.indptr) - 1, self.width

    def counts(self) -> np.ndarray:
        """How many genres each row has."""
        return np.diff(np.asarray(self.indptr, np.int64))

    @functools.cached_property
    def _entry_rows(self) -> np.ndarray:
        """The row of each stored entry (worked out once per matrix)."""
        return np.repeat(np.arange(self.shape[0]), self.counts())

    def row(self, i: int) -> np.ndarray:
        """The genre ids of row ``i``, in the catalogue's order."""
        return np.asarray(self.indices[self.indptr[i] : self.indptr[i + 1]])

    def take(self, rows: np.ndarray) -> GenreMatrix:
        """The sub-matrix of ``rows``, in their order (one gather, no loop)."""
        rows = np.asarray(rows, np.int64)
        starts = np.asarray(self.indptr[rows], np.int64)
        lengths = np.asarray(self.indptr[rows + 1], np.int64) - starts
        indptr = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lengths, out=indptr[1:])
        gather = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
        return GenreMatrix(indptr, np.asarray(self.indices[gather], np.int64), self.width)

    def dot(self, vector: np.ndarray) -> np.ndarray:
        """``M @ vector``: each row's sum of ``vector`` over its genres."""
        values = np.asarray(vector, np.float64)[np.asarray(self.indices, np.int64)]
        return np.bincount(self._entry_rows, weights=values, minlength=self.shape[0])

    def tdot(self, weights: np.ndarray) -> np.ndarray:
        """``M.T @ weights``: each genre's sum of the weights of the rows that have it."""
        spread = np.repeat(np.asarray(weights, np.float64), self.counts())
        return np.bincount(np.asarray(self.indices, np.int64), weights=spread, minlength=self.width)

    def dense(self) -> np.ndarray:
        """The rows as a dense float64 matrix over the columns any of them uses (a tag
        catalogue has thousands of columns; a list's candidates use few of them)."""
        indices = np.asarray(self.indices, np.int64)
        used = np.bincount(indices, minlength=self.width) > 0
        columns = np.cumsum(used)[indices] - 1  # each entry's column among those used
        out = np.zeros((self.shape[0], int(used.sum())))
        out[self._entry_rows, columns] = 1.0
        return out
