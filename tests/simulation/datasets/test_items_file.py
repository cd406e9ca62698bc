"""Item metadata for your own interactions file (``stamen.simulation.datasets.items_file``):
titles, genres and years joined to the run's items by id, every unmatched item and row
counted, and every malformed row named by file, line and column."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stamen.errors import DataFormatError
from stamen.models.bundle import ReleaseCatalog
from stamen.models.two_tower.features import item_features
from stamen.simulation.datasets import DataFileSettings, load_interactions_file

INTERACTIONS = "u,i\nalice,10\nalice,11\nbob,10\nbob,12\ncarol,13\n"


def _load(tmp_path: Path, items: str, name: str = "items.csv", **columns):
    (tmp_path / "inter.csv").write_text(INTERACTIONS)
    (tmp_path / name).write_text(items)
    settings = DataFileSettings(
        path=tmp_path / "inter.csv",
        user_col="u",
        item_col="i",
        items_path=tmp_path / name,
        items_id_col="id",
        **columns,
    )
    return load_interactions_file(settings)


def test_titles_genres_and_years_join_the_run_items_by_id(tmp_path) -> None:
    loaded = _load(
        tmp_path,
        "id,title,tags,year\n"
        "12,Heat,Action| Crime |,1995-12-15\n"
        "10,Toy Story,Animation|Comedy,1995\n"
        "11,,Drama,\n"  # no title, no year
        "99,Not in the run,Drama,2000\n",
        title_col="title",
        genres_col="tags",
        year_col="year",
    )
    catalog = loaded.dataset.catalog
    assert [str(i) for i in catalog.item_ids] == ["10", "11", "12", "13"]
    assert catalog.titles == ("Toy Story", "11", "Heat", "13")
    assert all(type(title) is str for title in catalog.titles)
    assert catalog.genres == (("Animation", "Comedy"), ("Drama",), ("Action", "Crime"), ())
    assert catalog.year.tolist() == [1995, 0, 1995, 0]
    report = loaded.report.item_metadata
    assert report is not None
    assert (report["rows"], report["matched"]) == (4, 3)
    assert (report["items_without_metadata"], report["rows_unused"]) == (1, 1)
    assert (report["titles_missing"], report["genre_names"], report["years_known"]) == (1, 5, 2)
    text = "\n".join(loaded.report.lines())
    assert "the run's items it does not list: 1" in text
    assert "rows for items not in the run: 1 (not used)" in text
    from stamen.simulation.cli.data import describe

    problems = describe(loaded.dataset, loaded.report)
    assert any("1 of the run's items are not in the items file" in line for line in problems)


def test_the_content_features_read_the_metadata(tmp_path) -> None:
    loaded = _load(
        tmp_path,
        "id,tags\n10,Comedy\n11,Comedy\n12,Drama\n13,Drama\n",
        genres_col="tags",
    )
    features = item_features(ReleaseCatalog.from_catalog(loaded.dataset.catalog))
    genres = features[:, :2]  # Comedy, Drama
    np.testing.assert_array_equal(genres, [[1, 0], [1, 0], [0, 1], [0, 1]])


def test_json_lines_take_genre_lists_nulls_and_epoch_years(tmp_path) -> None:
    rows = [
        {"id": 10, "title": "A", "genres": ["X", "Y"], "year": 820454400},  # 1996-01-01
        {"id": 11, "title": None, "genres": None, "year": None},
        {"id": "12", "title": 7, "genres": "Z", "year": 2001},
    ]
    loaded = _load(
        tmp_path,
        "\n".join(json.dumps(r) for r in rows) + "\n",
        name="items.jsonl",
        title_col="title",
        genres_col="genres",
        year_col="year",
    )
    catalog = loaded.dataset.catalog
    assert catalog.titles[:3] == ("A", "11", "7")
    assert catalog.genres[:3] == (("X", "Y"), (), ("Z",))
    assert catalog.year.tolist()[:3] == [1996, 0, 2001]


@pytest.mark.parametrize(
    ("items", "columns", "line", "field", "words"),
    [
        ("id,year\n10,1995\n11,95\n", {"year_col": "year"}, 3, "year", "found '95'"),
        ("id,year\n10,1995\n11,soon\n", {"year_col": "year"}, 3, "year", "found 'soon'"),
        ("id,t\n10,A\n11,B\n10,C\n", {"title_col": "t"}, 4, "id", "'10' is on line 2 already"),
        ("id,t\n10,A\n,B\n", {"title_col": "t"}, 3, "id", "empty id"),
        ("id,t\n10,A,extra\n", {"title_col": "t"}, 2, "t", "found 3 fields"),
        ("key,t\n10,A\n", {"title_col": "t"}, 1, "id", "no column 'id' (item id)"),
    ],
)
def test_a_bad_items_file_names_file_line_and_column(
    tmp_path, items, columns, line, field, words
) -> None:
    with pytest.raises(DataFormatError) as caught:
        _load(tmp_path, items, **columns)
    error = caught.value
    assert (error.line, error.field) == (line, field)
    assert words in str(error) and "items.csv" in str(error)


def test_metadata_settings_are_checked_together() -> None:
    with pytest.raises(ValueError, match="need an items file"):
        DataFileSettings(path=Path("x.csv"), user_col="u", item_col="i", title_col="t")
    with pytest.raises(ValueError, match="at least one of --title-col"):
        DataFileSettings(
            path=Path("x.csv"), user_col="u", item_col="i", items_path="m.csv", items_id_col="id"
        )
    with pytest.raises(ValueError, match="item id column"):
        DataFileSettings(
            path=Path("x.csv"), user_col="u", item_col="i", items_path="m.csv", title_col="t"
        )
    with pytest.raises(ValueError, match="two roles: 'id'"):
        DataFileSettings(
            path=Path("x.csv"),
            user_col="u",
            item_col="i",
            items_path="m.csv",
            items_id_col="id",
            title_col="id",
        )


def test_without_an_items_file_the_report_says_so(tmp_path) -> None:
    (tmp_path / "inter.csv").write_text(INTERACTIONS)
    loaded = load_interactions_file(
        DataFileSettings(path=tmp_path / "inter.csv", user_col="u", item_col="i")
    )
    assert loaded.report.item_metadata is None
    assert any("item metadata: none" in line for line in loaded.report.lines())
