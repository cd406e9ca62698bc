"""The approximate item index on small random tables: recall against exact, exact scores,
order, its bytes read back, an int8 table re-scored as served, more items asked for than
there are, and the error without faiss."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from stamen.errors import IndexLibraryMissing, StamenError
from stamen.models import item_index
from stamen.models.item_index import ApproximateIndex, exact_top
from stamen.models.quantize import ItemTable

ITEMS, DIM = 5000, 64


@pytest.fixture
def faiss() -> object:
    """Skip the test when faiss is not installed."""
    return pytest.importorskip("faiss")


def table_and_queries(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A Gaussian table (factors and biases N(0, 0.1²), as ``benchmarks/device.py``'s) and
    ``count`` user-like vectors: the mean of 50 rows plus noise, scaled so that the spread
    of ``table @ v`` over the items equals the biases' (``benchmarks/ann.py``'s queries)."""
    rng = np.random.default_rng(seed)
    table = rng.normal(0.0, 0.1, (ITEMS, DIM)).astype(np.float32)
    bias = rng.normal(0.0, 0.1, ITEMS).astype(np.float32)
    queries = np.empty((count, DIM), np.float32)
    for i in range(count):
        mean = table[rng.integers(0, ITEMS, 50)].mean(axis=0)
        v = mean + rng.normal(0.0, float(mean.std()), DIM)
        queries[i] = v * (float(bias.std()) / float((table @ v).std()))
    return table, bias, queries


def test_recall_at_10_against_exact(faiss: object) -> None:
    """Recall@10 with 200 candidates re-scored (4% of 5,000 items) is at least 0.9.

    Why that bound holds: the scan codes each pair of dimensions with 16 centroids, 2 bits
    a dimension, whose squared error on Gaussian data is about a twelfth of the variance
    (the rate-distortion bound is a sixteenth; k-means comes within ~1.3×), so the scan's
    score error has a spread of about 0.3 of the factor term's, 0.2 of the whole score's
    (factor term and bias equally spread; the bias, coded alone beside a zero column, far
    more finely). An exact top-10 item of 5,000 (the top 0.2%, about 2.9 spreads above the
    mean) is lost only when its error pushes it below the 200th scanned score (the top 4%,
    about 1.75 spreads): a shortfall of about 1.15 spreads, some 5.7 error spreads, which
    happens to well under 1% of such items. 0.9 leaves room for the rough constants."""
    table, bias, queries = table_and_queries(50)
    index = ApproximateIndex.build(table, bias, threads=1, candidates=200)
    hits = []
    for v in queries:
        rows, _ = index.search(v, 10)
        truth, _ = exact_top(table, bias, v, 10)
        hits.append(len(np.intersect1d(rows, truth)) / 10)
    assert np.mean(hits) >= 0.9


def test_scores_are_exact_and_sorted(faiss: object) -> None:
    table, bias, queries = table_and_queries(5)
    index = ApproximateIndex.build(table, bias, threads=1, candidates=300)
    for v in queries:
        rows, scores = index.search(v, 100)
        assert rows.dtype == np.int64 and scores.dtype == np.float32
        assert len(rows) == 100 and len(np.unique(rows)) == 100
        np.testing.assert_allclose(scores, table[rows] @ v + bias[rows], rtol=1e-6, atol=1e-7)
        assert np.all(np.diff(scores) <= 0)


def test_its_bytes_read_back_give_the_same_results(faiss: object) -> None:
    table, bias, queries = table_and_queries(10)
    built = ApproximateIndex.build(table, bias, threads=1, candidates=250)
    data = built.to_bytes()
    assert data.dtype == np.uint8 and len(data) < table.nbytes / 5  # codes, not the table
    opened = ApproximateIndex.from_bytes(data, table, bias, candidates=250)
    assert len(opened) == ITEMS
    for v in queries:
        rows, scores = built.search(v, 50)
        again_rows, again_scores = opened.search(v, 50)
        np.testing.assert_array_equal(rows, again_rows)
        np.testing.assert_array_equal(scores, again_scores)


def test_reading_refuses_another_table_and_bad_bytes(faiss: object) -> None:
    table, bias, _ = table_and_queries(1)
    data = ApproximateIndex.build(table, bias, threads=1).to_bytes()
    with pytest.raises(ValueError, match="table"):
        ApproximateIndex.from_bytes(data, table[:-1], bias[:-1])
    with pytest.raises(ValueError, match="not a faiss index"):
        ApproximateIndex.from_bytes(data[: len(data) // 2], table, bias)


def test_an_int8_table_is_re_scored_as_the_device_serves_it(faiss: object) -> None:
    table, bias, queries = table_and_queries(3)
    int8 = ItemTable.quantize(table)
    index = ApproximateIndex.build(table, bias, threads=1, candidates=300)
    served = ApproximateIndex.from_bytes(index.to_bytes(), int8, bias, candidates=300)
    for v in queries:
        rows, scores = served.search(v, 20)
        np.testing.assert_allclose(scores, int8.rows(rows) @ v + bias[rows], rtol=1e-6)


def test_more_than_the_catalogue_gives_every_item_in_order(faiss: object) -> None:
    table, bias, queries = table_and_queries(1)
    index = ApproximateIndex.build(table, bias, threads=1, candidates=100)
    rows, scores = index.search(queries[0], ITEMS + 10)
    np.testing.assert_array_equal(np.sort(rows), np.arange(ITEMS))
    truth, truth_scores = exact_top(table, bias, queries[0], ITEMS)
    np.testing.assert_array_equal(scores, truth_scores)
    assert np.all(np.diff(scores) <= 0)
    # n above the candidates but below the catalogue: at least n re-scored
    rows, scores = index.search(queries[0], 150)
    assert len(rows) == 150 and np.all(np.diff(scores) <= 0)
    assert index.search(queries[0], 0)[0].shape == (0,)


def test_exact_top_is_the_exact_best() -> None:
    table, bias, queries = table_and_queries(1)
    rows, scores = exact_top(table, bias, queries[0], 20)
    full = table @ queries[0] + bias
    np.testing.assert_array_equal(rows, np.argsort(-full)[:20])
    np.testing.assert_allclose(scores, full[rows])


def test_missing_faiss_names_the_pip_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    table, bias, _ = table_and_queries(1)
    with pytest.raises(IndexLibraryMissing, match="pip install faiss-cpu") as caught:
        ApproximateIndex.build(table, bias)
    assert isinstance(caught.value, ImportError) and isinstance(caught.value, StamenError)
    assert item_index.PIP_PACKAGE == "faiss-cpu"


def test_a_search_re_scores_one_item_in_a_hundred_between_its_bounds() -> None:
    from stamen.models.item_index import DEFAULT_CANDIDATES, default_candidates

    assert default_candidates(5_000) == 1000
    assert default_candidates(100_000) == 1000
    assert default_candidates(250_000) == 2500
    assert default_candidates(1_000_000) == DEFAULT_CANDIDATES == 4000
