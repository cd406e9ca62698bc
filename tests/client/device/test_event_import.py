"""``Device.import_events``: an events file recorded in one transaction, streamed, its
errors naming the file, the line and the column."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest
from helpers.devices import retrieval_device
from helpers.signed_releases import small_mf_release

from stamen.client import DataError, EventFile
from stamen.errors import DataFormatError
from stamen.privacy import generate_signing_key

PUBLISHER = generate_signing_key()


@pytest.fixture
def device(tmp_path):
    with retrieval_device(tmp_path / "device", PUBLISHER[1]) as opened:
        opened.apply_release(small_mf_release(1, PUBLISHER[0], n=20))
        yield opened


def _csv(path: Path, rows: list[str], header: str = "item,kind,value,at") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def test_a_bad_last_row_leaves_nothing_and_names_file_line_and_column(device, tmp_path) -> None:
    device.record("item-1", "play", at=50.0)
    state = (device.item_indices().tolist(), device.history_indices().tolist())
    rows = [f"item-{i % 20},play,1,{100 + i}" for i in range(2500)]
    bad = _csv(tmp_path / "events.csv", [*rows, "item-3,stare,1,3000"])
    with pytest.raises(DataFormatError) as raised:
        device.import_events(bad)
    assert str(raised.value).startswith(f"{bad}, line 2502, field 'kind': unknown kind 'stare'")
    assert len(device.history()) == 1  # the 2,500 rows before it were rolled back
    assert (device.item_indices().tolist(), device.history_indices().tolist()) == state
    # A mapped column is named as the file names it.
    renamed = _csv(tmp_path / "mine.csv", ["item-2,1,nan"], header="movie,at,stars")
    with pytest.raises(DataFormatError, match=r"line 2, field 'stars': nan is not finite"):
        device.import_events(renamed, columns={"item": "movie", "value": "stars"}, kind="rating")
    assert len(device.history()) == 1


def test_json_lines_string_ids_times_and_idempotent_ids(device, tmp_path) -> None:
    path = tmp_path / "events.jsonl"
    rows = [
        {
            "item": "item-4",
            "kind": "rating",
            "value": 5,
            "at": "2021-03-01T08:00:00+00:00",
            "id": "a",
        },
        {"item": "item-5", "kind": "rating", "value": 1, "at": 1614600000, "id": "b", "note": "x"},
        {"item": 6, "kind": "not-interested", "id": "c"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    first = device.import_events(path)
    assert (first.stored, first.read, first.ignored_columns) == (3, 3, ("note",))
    stored = device.history()
    assert [e.item for e in stored] == ["item-4", "item-5", "6"]
    assert stored[0].at == 1614585600.0 and stored[1].at == 1614600000.0
    again = device.import_events(path)  # the same file again: every id is stored already
    assert (again.stored, again.read) == (0, 3)
    assert len(device.history()) == 3
    # a 1-star rating is negative feedback: item-5 is rejected, item-4 is the person's
    assert device.item_indices().tolist() == [
        device._serving.bundle.catalog.index_of(["item-4"])[0]
    ]


@pytest.mark.parametrize(
    ("text", "error", "match"),
    [
        ("item,value\nitem-1,1\n", DataFormatError, r"line 1: no column \['kind'\]"),
        (
            "item,kind\nitem-1,play,extra\n",
            DataFormatError,
            r"line 2: 3 fields; the header names 2",
        ),
        (
            "item,kind,at\nitem-1,play,2021-03-01T08:00\n",
            DataFormatError,
            r"line 2, field 'at': .*no UTC offset",
        ),
        (
            "item,kind,at\nitem-1,play,yesterday\n",
            DataFormatError,
            r"line 2, field 'at': 'yesterday'",
        ),
        ("item,kind\n,play\n", DataFormatError, r"line 2, field 'item': empty"),
        ("", DataError, "empty file"),
    ],
)
def test_bad_files_are_named(device, tmp_path, text, error, match) -> None:
    path = tmp_path / "events.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(error, match=match):
        device.import_events(path)
    assert device.history() == []


def test_what_is_not_an_events_file_is_refused(device, tmp_path) -> None:
    with pytest.raises(DataError, match="no such events file"):
        device.import_events(tmp_path / "missing.csv")
    (tmp_path / "events.txt").write_text("item,kind\nx,play\n")
    with pytest.raises(DataError, match="unknown events file format '.txt'"):
        device.import_events(tmp_path / "events.txt")
    assert device.import_events(tmp_path / "events.txt", format="csv").stored == 1
    with pytest.raises(DataError, match="columns for unknown fields"):
        EventFile(tmp_path / "events.txt", format="csv", columns={"title": "x"})


def test_an_import_streams_in_constant_memory(device, tmp_path) -> None:
    """Python's peak allocation while importing a file four times as long is about the
    same: rows are read, checked and stored a chunk at a time, never held all at once
    (the device's state grows with distinct items, 20 here, not with rows)."""

    def peak(rows: int) -> int:
        path = _csv(
            tmp_path / f"events-{rows}.csv",
            [f"item-{i % 20},play,1,{1_000_000 + i}" for i in range(rows)],
        )
        progress: list[tuple[int, int, int]] = []
        tracemalloc.start()
        try:
            device.import_events(path, progress=lambda *p: progress.append(p))
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            assert progress[-1][0] == rows and progress[-1][1] == progress[-1][2]
            assert [p[1] for p in progress] == sorted(p[1] for p in progress)

    small, large = peak(10_000), peak(40_000)
    assert large < 1.5 * small, (small, large)
