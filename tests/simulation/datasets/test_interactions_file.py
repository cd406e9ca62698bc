"""A researcher's own interactions file: formats, ids, duplicates, positives, k-core, and
an error naming file, line and column for each bad input. Fixture files are written into
``tmp_path``; the real ML-100K (read only, skipped when absent) checks that the file
loader and the named loader see the same interactions."""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers.paths import real_data
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.errors import ConfigError, DataError, DataFormatError
from stamen.simulation.datasets import (
    DataFileSettings,
    load_dataset,
    load_interactions_file,
)
from stamen.simulation.datasets.interactions_file import _merge
from stamen.simulation.protocol.split import leave_one_out


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def _load(path: Path, **columns):
    return load_interactions_file(DataFileSettings(path=path, **columns))


def _pairs(loaded) -> dict[tuple[object, object], tuple[float, int | None]]:
    inter = loaded.dataset.interactions
    times = inter.timestamp if inter.timestamp is not None else [None] * len(inter)
    return {
        (inter.user_ids[u].item(), inter.item_ids[i].item()): (float(v), t if t is None else int(t))
        for u, i, v, t in zip(inter.user, inter.item, inter.value, times, strict=True)
    }


CSV = (
    "u,i,r,t\n"
    "alice,m1,4,1700000000\n"
    "alice,m2,5,1700000100\n"
    "bob,m1,3,1700000200\n"
    "alice,m1,2,1700000300\n"  # alice re-rates m1 later: this row is kept
    "\n"  # a blank line holds no row
    "bob,m3,5,1700000400\n"
    "carol,m3,1,1700000500\n"
)


def test_csv_with_string_ids_keeps_the_latest_rating_of_a_repeated_pair(tmp_path) -> None:
    path = _write(tmp_path, "ratings.csv", CSV)
    loaded = _load(path, user_col="u", item_col="i", rating_col="r", time_col="t")
    data, report = loaded.dataset, loaded.report
    assert data.name == "ratings.csv" and data.interactions.source == str(path)
    assert data.interactions.user_ids.tolist() == ["alice", "bob", "carol"]
    assert data.interactions.item_ids.tolist() == ["m1", "m2", "m3"]
    assert _pairs(loaded) == {
        ("alice", "m1"): (2.0, 1700000300),
        ("alice", "m2"): (5.0, 1700000100),
        ("bob", "m1"): (3.0, 1700000200),
        ("bob", "m3"): (5.0, 1700000400),
        ("carol", "m3"): (1.0, 1700000500),
    }
    assert (report.rows, report.duplicates_merged, report.dropped) == (6, 1, [])
    assert report.path == str(path.resolve())
    assert report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (report.user_ids, report.item_ids) == ("string", "string")
    assert data.catalog.titles == ("m1", "m2", "m3")
    assert data.catalog.first_seen.tolist() == [1700000200, 1700000100, 1700000400]


def test_min_rating_drops_the_pairs_below_it_and_counts_them(tmp_path) -> None:
    path = _write(tmp_path, "ratings.csv", CSV)
    loaded = _load(path, user_col="u", item_col="i", rating_col="r", time_col="t", min_rating=3)
    # alice's m1 is judged by its latest rating (2): dropped, as is carol's only one
    assert set(_pairs(loaded)) == {("alice", "m2"), ("bob", "m1"), ("bob", "m3")}
    assert loaded.report.dropped == [
        {"reason": "rating below --min-rating 3", "rows": 2, "users": 1, "items": 0}
    ]
    assert loaded.report.positive_rule == "rating 'r' at least 3"


def test_tsv_integer_ids_are_numbers_and_the_first_row_wins_without_times(tmp_path) -> None:
    path = _write(tmp_path, "plays.tsv", "user\titem\tr\n10\t7\t1\n9\t7\t2\n10\t7\t3\n")
    loaded = _load(path, user_col="user", item_col="item", rating_col="r")
    assert loaded.dataset.interactions.user_ids.tolist() == [9, 10]  # numeric order
    assert loaded.dataset.interactions.user_ids.dtype == np.int64
    assert _pairs(loaded) == {(10, 7): (1.0, None), (9, 7): (2.0, None)}
    assert loaded.report.duplicates_merged == 1 and loaded.report.user_ids == "integer"
    # "07" is not "7": ids written two ways stay text, compared exactly
    path = _write(tmp_path, "mixed.tsv", "user\titem\n7\ta\n07\ta\n")
    loaded = _load(path, user_col="user", item_col="item")
    assert loaded.dataset.interactions.user_ids.tolist() == ["07", "7"]


def test_json_lines_sum_weights_and_read_iso_times(tmp_path) -> None:
    rows = [
        {"who": 1, "what": "song-a", "plays": 3, "at": "2024-05-01T12:00:00"},
        {"who": 1, "what": "song-a", "plays": 2, "at": "2024-05-03"},
        {"who": "2", "what": "song-b", "plays": 1, "at": "2024-05-02T00:00:00+02:00"},
    ]
    path = _write(tmp_path, "events.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    cols = {"user_col": "who", "item_col": "what", "weight_col": "plays", "time_col": "at"}
    loaded = _load(path, **cols)
    may3 = 1714694400  # 2024-05-03T00:00:00Z: the latest time of the merged pair
    assert _pairs(loaded) == {(1, "song-a"): (5.0, may3), (2, "song-b"): (1.0, 1714600800)}
    assert loaded.report.duplicate_rule == "weights summed, the latest time kept"
    # a threshold on the summed weight
    loaded = _load(path, **cols, min_rating=4)
    assert set(_pairs(loaded)) == {(1, "song-a")}


def test_k_core_repeats_until_every_user_and_item_has_enough(tmp_path) -> None:
    # d's only item z has 1 user: z goes, then d has 1 item and goes; then c (2 items: x, y)
    # stays; a single pass would have kept d.
    rows = ["a,x", "a,y", "b,x", "b,y", "c,x", "c,y", "d,x", "d,z"]
    path = _write(tmp_path, "k.csv", "u,i\n" + "\n".join(rows) + "\n")
    loaded = _load(
        path, user_col="u", item_col="i", min_user_interactions=2, min_item_interactions=2
    )
    inter = loaded.dataset.interactions
    assert inter.user_ids.tolist() == ["a", "b", "c"] and inter.item_ids.tolist() == ["x", "y"]
    (drop,) = loaded.report.dropped
    assert (drop["rows"], drop["users"], drop["items"]) == (2, 1, 1)
    assert "removed in 2 passes" in drop["reason"]
    assert loaded.report.interactions == 6 and loaded.report.users == 3


def test_the_split_takes_a_file_data_set_as_it_takes_a_named_one(tmp_path) -> None:
    lines = [f"u{u},i{(u * 7 + k) % 40},{k}" for u in range(12) for k in range(6)]
    path = _write(tmp_path, "own.csv", "user,item,time\n" + "\n".join(lines) + "\n")
    data = _load(path, user_col="user", item_col="item", time_col="time").dataset
    split = leave_one_out(data.interactions, seed=0, n_negatives=5)
    assert split.stats()["evaluated_users"] == 12 and split.n_items == 40


# ------------------------------------------------------------------ bad inputs


def test_an_empty_file_and_a_header_alone_are_errors(tmp_path) -> None:
    empty = _write(tmp_path, "empty.csv", "")
    with pytest.raises(DataFormatError, match="the file is empty; expected a header") as err:
        _load(empty, user_col="u", item_col="i")
    assert err.value.path == str(empty)
    header = _write(tmp_path, "header.csv", "u,i\n\n")
    with pytest.raises(DataFormatError, match="no data rows"):
        _load(header, user_col="u", item_col="i")
    with pytest.raises(DataFormatError, match="no data rows"):
        _load(_write(tmp_path, "empty.jsonl", "\n"), user_col="u", item_col="i")


def test_a_missing_column_names_the_file_line_and_column(tmp_path) -> None:
    path = _write(tmp_path, "r.csv", "user,item\n1,2\n")
    with pytest.raises(DataFormatError) as err:
        _load(path, user_col="user", item_col="item", rating_col="stars")
    assert (err.value.line, err.value.field) == (1, "stars")
    assert str(err.value) == (
        f"{path}, line 1, field 'stars': no column 'stars' (rating) in the header; it has "
        "'user', 'item'"
    )
    path = _write(tmp_path, "r.jsonl", '{"user": 1, "item": 2}\n{"user": 1}\n')
    with pytest.raises(DataFormatError) as err:
        _load(path, user_col="user", item_col="item")
    assert (err.value.line, err.value.field) == (2, "item")


@pytest.mark.parametrize(
    ("name", "text", "columns", "line", "field", "message"),
    [
        ("r.csv", "u,i,r\na,b,4\na,c,four\n", {"rating_col": "r"}, 3, "r", "expected a number"),
        ("r.csv", "u,i,r\na,b,4\na,c,nan\n", {"rating_col": "r"}, 3, "r", "finite number"),
        ("r.csv", "u,i,r\na,b\n", {"rating_col": "r"}, 2, "r", "found 2 fields, the header"),
        ("r.csv", "u,i\na,b\n,c\n", {}, 3, "u", "empty id"),
        ("w.csv", "u,i,w\na,b,1\na,c,0\n", {"weight_col": "w"}, 3, "w", "must be above 0"),
        ("t.csv", "u,i,t\na,b,5\na,c,noon\n", {"time_col": "t"}, 3, "t", "seconds since"),
        ("t.csv", "u,i,t\na,b,2024-01-01\na,c,5\n", {"time_col": "t"}, 3, "t", "ISO 8601"),
        ("j.jsonl", '{"u": "a", "i": "b"}\n{"u": "a", "i": \n', {}, 2, None, "not JSON"),
        ("j.jsonl", '{"u": "a", "i": "b"}\n{"u": true, "i": "c"}\n', {}, 2, "u", "found bool"),
        ("j.jsonl", "[1, 2]\n", {}, 1, None, "expected a JSON object"),
    ],
)
def test_a_bad_value_names_the_file_line_and_column(
    tmp_path, name, text, columns, line, field, message
) -> None:
    path = _write(tmp_path, name, text)
    with pytest.raises(DataFormatError) as err:
        _load(path, user_col="u", item_col="i", **columns)
    assert (err.value.path, err.value.line, err.value.field) == (str(path), line, field)
    assert message in str(err.value)


def test_parquet_without_pyarrow_names_the_missing_package(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = _write(tmp_path, "t.parquet", "PAR1")
    with pytest.raises(DataError, match="needs the package pyarrow, which is not installed"):
        _load(path, user_col="u", item_col="i")


def test_settings_and_formats_are_checked(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot tell the format from the suffix '.dat'"):
        _load(_write(tmp_path, "x.dat", "u,i\n1,2\n"), user_col="u", item_col="i")
    loaded = _load(
        _write(tmp_path, "x.dat", "u,i\n1,2\n"), user_col="u", item_col="i", format="csv"
    )
    assert len(loaded.dataset.interactions) == 1
    with pytest.raises(DataFormatError, match="no such file"):
        _load(tmp_path / "nope.csv", user_col="u", item_col="i")
    with pytest.raises(ValueError, match="not both"):
        DataFileSettings(user_col="u", item_col="i", rating_col="r", weight_col="w")
    with pytest.raises(ValueError, match="min-rating needs a rating column"):
        DataFileSettings(min_rating=3)
    with pytest.raises(ValueError, match="one column in two roles: 'u'"):
        DataFileSettings(user_col="u", item_col="u")
    with pytest.raises(ValueError, match="needs its user and item columns"):
        DataFileSettings(path=tmp_path / "x.csv", user_col="u")
    everything = _write(tmp_path, "all.csv", "u,i,r\na,b,1\nc,d,2\n")
    with pytest.raises(DataError, match="no interactions left after the filters"):
        _load(everything, user_col="u", item_col="i", rating_col="r", min_rating=5)


# ------------------------------------------------------------ against references


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(1, 5), st.integers(0, 4)),
        min_size=1,
        max_size=30,
    ),
    st.sampled_from(["first", "latest", "summed"]),
)
def test_merging_duplicates_matches_a_row_by_row_reference(rows, rule) -> None:
    key = np.array([u * 4 + i for u, i, _, _ in rows], np.int64)
    value = np.array([v for _, _, v, _ in rows], np.float64)
    time = np.array([t for _, _, _, t in rows], np.int64)
    kept, merged, times = _merge(
        key, value, None if rule == "first" else time, summed=rule == "summed"
    )
    expected: dict[int, tuple[float, int]] = {}
    for j, (k, v, t) in enumerate(zip(key.tolist(), value.tolist(), time.tolist(), strict=True)):
        if k not in expected:
            expected[k] = (v, t, j)
        elif rule == "summed":
            expected[k] = (expected[k][0] + v, max(expected[k][1], t), expected[k][2])
        elif rule == "latest" and t >= expected[k][1]:
            expected[k] = (v, t, expected[k][2])
    assert sorted(key[kept].tolist()) == sorted(expected)
    assert Counter(key[kept].tolist()) == Counter(set(key.tolist()))
    for k, v in zip(key[kept].tolist(), merged.tolist(), strict=True):
        assert v == expected[k][0]
    if rule != "first":
        assert times.tolist() == [expected[k][1] for k in key[kept].tolist()]


def test_ml100k_read_as_a_file_gives_the_named_loaders_interactions(tmp_path) -> None:
    folder = real_data("ml-100k")
    named = load_dataset("ml-100k", folder).interactions
    path = tmp_path / "u.tsv"
    path.write_text("user\titem\trating\ttime\n" + (folder / "u.data").read_text())
    own = _load(
        path, user_col="user", item_col="item", rating_col="rating", time_col="time"
    ).dataset.interactions
    assert (own.n_users, len(own)) == (named.n_users, len(named)) == (943, 100_000)

    def rows(inter) -> set[tuple[int, int, float, int]]:
        return set(
            zip(
                inter.user_ids[inter.user].tolist(),
                inter.item_ids[inter.item].tolist(),
                inter.value.tolist(),
                inter.timestamp.tolist(),
                strict=True,
            )
        )

    assert rows(own) == rows(named)
