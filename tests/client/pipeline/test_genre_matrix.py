"""The pipeline's numpy genre matrix gives what SciPy's CSR products give."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import sparse

from stamen.client.pipeline.genre_matrix import GenreMatrix


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 29), max_size=6, unique=True), min_size=1, max_size=60),
    st.data(),
)
def test_products_match_scipy(rows_genres: list[list[int]], data) -> None:
    indptr = np.concatenate([[0], np.cumsum([len(g) for g in rows_genres])]).astype(np.int64)
    indices = np.array([g for gs in rows_genres for g in gs], np.int32)
    matrix = GenreMatrix(indptr, indices, 30)
    reference = sparse.csr_matrix(
        (np.ones(len(indices)), indices, indptr), shape=(len(rows_genres), 30)
    )
    n = len(rows_genres)
    rows = np.array(data.draw(st.lists(st.integers(0, n - 1), max_size=20)), np.int64)
    vector = np.random.default_rng(n).normal(size=30)
    weights = np.random.default_rng(n + 1).random(len(rows))
    taken = matrix.take(rows)
    assert taken.shape == (len(rows), 30)
    assert np.array_equal(taken.dot(vector), np.asarray(reference[rows] @ vector).ravel())
    assert np.allclose(taken.tdot(weights), np.asarray(reference[rows].T @ weights).ravel())
    full = reference[rows].toarray()
    assert np.array_equal(taken.dense(), full[:, full.any(axis=0)])  # the columns used
    for r in rows[:3]:
        assert sorted(matrix.row(int(r)).tolist()) == sorted(rows_genres[r])
