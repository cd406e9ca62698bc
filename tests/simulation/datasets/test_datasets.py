"""Data set loaders, download cache and synthetic generator.

Fixtures under fixtures/ beside this file are invented lines in each real format; the
real data sets are read from $STAMEN_DATA_DIR or ../shared/data when present, else skipped.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers.paths import real_data
from hypothesis import given, settings
from hypothesis import strategies as st

import stamen.simulation.datasets as datasets
from stamen.errors import ChecksumError, ConfigError, DataError, DataFormatError
from stamen.models.schema import Dataset
from stamen.simulation.datasets import (
    DATASETS,
    ML100K_GENRES,
    Archive,
    default_data_dir,
    find_local,
    generate_synthetic,
    load_dataset,
    load_lastfm_2k,
    load_movielens_100k,
    load_movielens_csv,
    load_movielens_dat,
)
from stamen.simulation.datasets.download import MARKER, fetch_url, file_sha256


def _materialise_fixtures() -> Path:
    """Copy fixtures/*/NAME.fixture (beside this file) to a temporary tree as NAME. The files keep a
    suffix in the repository so that no tracked file carries a real data set's name."""
    source = Path(__file__).resolve().parent / "fixtures"
    target = Path(tempfile.mkdtemp(prefix="stamen-fixtures-"))
    for path in source.glob("*/*.fixture"):
        dest = target / path.parent.name / path.name.removesuffix(".fixture")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
    return target


FIXTURES = _materialise_fixtures()

# ------------------------------------------------------------------------ helpers


def copy_fixture(tmp_path: Path, folder: str) -> Path:
    target = tmp_path / folder
    shutil.copytree(FIXTURES / folder, target)
    return target


def edit(path: Path, line: int, text: str | None) -> None:
    """Replace 1-based ``line`` of a file (or append when it is one past the end)."""
    lines = path.read_bytes().split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    new = None if text is None else text.encode("utf-8")
    if line == len(lines) + 1:
        lines.append(new)
    elif new is None:
        del lines[line - 1]
    else:
        lines[line - 1] = new
    path.write_bytes(b"\n".join(lines) + b"\n")


def pairs(ds: Dataset) -> set[tuple[int, int, float, int | None]]:
    i = ds.interactions
    ts = [None] * len(i) if i.timestamp is None else i.timestamp.tolist()
    return {
        (int(i.user_ids[u]), int(i.item_ids[v]), float(x), t)
        for u, v, x, t in zip(i.user.tolist(), i.item.tolist(), i.value.tolist(), ts, strict=True)
    }


def load_bad_line(
    tmp_path: Path, fmt: tuple, file_name: str, line: int, text: str, field: str
) -> DataFormatError:
    """Load a copy of ``fmt``'s fixture whose ``file_name`` has ``text`` at ``line``; check
    that the error's message names the file, the line and ``field``, and return it."""
    folder_name, _, load = fmt
    edit(copy_fixture(tmp_path, folder_name) / file_name, line, text)
    with pytest.raises(DataFormatError) as info:
        load(tmp_path / folder_name)
    message = str(info.value)
    assert file_name in message and f"line {line}" in message and f"field {field!r}" in message
    return info.value


# ------------------------------------------------------------- fixtures load exactly


def test_movielens_100k_fixture() -> None:
    ds = load_movielens_100k(FIXTURES / "ml-100k")
    assert ds.name == "ml-100k" and ds.has_timestamps
    assert pairs(ds) == {
        (1, 1, 5.0, 881250949),
        (1, 2, 3.0, 881250950),
        (2, 1, 4.0, 875000000),
        (2, 3, 2.0, 875000100),
        (3, 2, 1.0, 890000000),
        (3, 1, 4.0, 890000000),
    }
    cat = ds.catalog
    assert cat.item_ids.tolist() == [1, 2, 3, 4]
    assert cat.titles == ("Alpha Story (1995)", "Beta Heist (1994)", "Café Gamma (1996)", "unknown")
    assert cat.genres == (
        ("Animation", "Children's", "Comedy"),
        ("Action", "Crime", "Thriller"),
        ("Drama", "Romance"),
        ("unknown",),
    )
    assert cat.genre_names == ML100K_GENRES
    assert cat.year.tolist() == [1995, 1994, 1996, 0]
    assert cat.first_seen.tolist() == [875000000, 881250950, 875000100, -1]
    assert ds.interactions.n_users == 3 and ds.interactions.n_items == 4
    assert cat.genre_matrix().shape == (4, 19)


def test_movielens_100k_without_optional_files(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, "ml-100k")
    (folder / "u.genre").unlink()
    (folder / "u.user").unlink()
    ds = load_movielens_100k(folder)
    assert ds.catalog.genre_names == ML100K_GENRES
    assert len(ds.interactions) == 6


def test_movielens_1m_fixture_latin1() -> None:
    ds = load_movielens_dat(FIXTURES / "ml-1m", "ml-1m")
    assert ds.name == "ml-1m"
    assert pairs(ds) == {
        (7, 10, 5.0, 978300760),
        (7, 20, 3.0, 978302109),
        (8, 30, 4.0, 978301968),
        (8, 10, 2.0, 978300275),
    }
    assert ds.catalog.titles[1] == "Épsilon, The (1987)"
    assert ds.catalog.genres == (("Action", "Thriller"), ("Comedy", "Romance"), ("Drama",))
    assert ds.catalog.year.tolist() == [1999, 1987, 2000]
    assert ds.catalog.first_seen.tolist() == [978300275, 978302109, 978301968]


def test_movielens_10m_fixture_utf8() -> None:
    ds = load_dataset("ml-10m", FIXTURES / "ml-10M100K")
    assert ds.name == "ml-10m"
    assert pairs(ds) == {(5, 1, 4.5, 1230000000), (5, 3, 0.5, 1230000500), (6, 2, 3.0, 1100000000)}
    assert ds.catalog.titles == ("Ōmega (2003)", "Theta Returns (1950)", "Iota: Part II (2008)")
    assert ds.catalog.genres == (("Animation", "Children's"), (), ("IMAX", "Sci-Fi"))
    assert ds.catalog.year.tolist() == [2003, 1950, 2008]


def test_movielens_csv_fixture() -> None:
    ds = load_movielens_csv(FIXTURES / "ml-latest-small", "ml-latest-small")
    assert pairs(ds) == {
        (1, 1, 4.0, 964982703),
        (1, 2, 3.5, 964981247),
        (2, 1, 5.0, 1445714835),
        (2, 5, 0.5, 1445714900),
        (3, 3, 2.5, 1500000000),
    }
    cat = ds.catalog
    assert cat.titles == (
        "Kappa (1995)",
        "Lambda, The (1997)",
        "Xi (2006-2007)",
        "Omicron",
        'Pi "Quoted" Story (2001)',
    )
    assert cat.genres[0] == ("Adventure", "Animation", "Children", "Comedy", "Fantasy")
    assert cat.genres[2] == ()
    assert cat.year.tolist() == [1995, 1997, 2006, 0, 2001]
    assert cat.first_seen.tolist() == [964982703, 964981247, 1500000000, -1, 1445714900]
    assert load_dataset("ml-25m", FIXTURES / "ml-latest-small").name == "ml-25m"


def test_lastfm_fixture() -> None:
    ds = load_lastfm_2k(FIXTURES / "hetrec2011-lastfm-2k")
    assert ds.name == "lastfm-2k" and not ds.has_timestamps
    assert ds.interactions.timestamp is None and ds.catalog.first_seen is None
    assert pairs(ds) == {
        (2, 101, 500.0, None),
        (2, 102, 42.0, None),
        (3, 101, 7.0, None),
        (4, 103, 1.0, None),
    }
    assert ds.catalog.titles[:2] == ("Sigma Band", "Tau Ünïcode 東京")
    assert ds.catalog.titles[2] == "Upsilon \ufffd Odd"  # stray byte tolerated, visibly
    assert ds.catalog.genres == ((), (), ()) and ds.catalog.year.tolist() == [0, 0, 0]


def test_crlf_and_trailing_blank_lines_load(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, "ml-latest-small")
    for name in ("ratings.csv", "movies.csv"):
        path = folder / name
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n") + b"\r\n")
    ds = load_movielens_csv(folder, "ml-latest-small")
    assert pairs(ds) == pairs(load_movielens_csv(FIXTURES / "ml-latest-small", "x"))
    assert ds.catalog.titles[1] == "Lambda, The (1997)"


# ---------------------------------------------------------------- malformed input

ML100K = ("ml-100k", "u.data", load_movielens_100k)
ML1M = ("ml-1m", "ratings.dat", lambda p: load_movielens_dat(p, "ml-1m"))
CSV = ("ml-latest-small", "ratings.csv", lambda p: load_movielens_csv(p, "ml-latest-small"))
LASTFM = ("hetrec2011-lastfm-2k", "user_artists.dat", load_lastfm_2k)

BAD_LINES = [
    # (format, line, new text, field) -- the error must name file, line and field
    (ML100K, 7, "1\t3\t4", "timestamp"),  # too few fields
    (ML100K, 2, "1\t2\t3\t881250950\t9", "timestamp"),  # too many fields
    (ML100K, 3, "2.5\t1\t4\t875000000", "user id"),  # non-integer id
    (ML100K, 3, "2\tabc\t4\t875000000", "item id"),
    (ML100K, 4, "2\t3\tgood\t875000100", "rating"),  # non-numeric rating
    (ML100K, 4, "2\t3\t3.5\t875000100", "rating"),  # ML-100K ratings are integers
    (ML100K, 5, "3\t2\t6\t890000000", "rating"),  # out of range
    (ML100K, 6, "3\t1\t4\t-5", "timestamp"),  # negative timestamp
    (ML100K, 7, "1\t99\t3\t881250999", "item id"),  # not in u.item
    (ML100K, 7, "2\t1\t2\t875000001", "item id"),  # duplicate of line 3
    (ML100K, 7, "9\t1\t3\t881250999", "user id"),  # not in u.user
    (ML1M, 2, "7::20::3", "Timestamp"),
    (ML1M, 2, "7::2O::3::978302109", "MovieID"),
    (ML1M, 2, "7::20::3::97830:2109", "Timestamp"),
    (ML1M, 3, "8::30::x::978301968", "Rating"),
    (ML1M, 3, "8::30::5.5::978301968", "Rating"),
    (ML1M, 3, "8::30::nan::978301968", "Rating"),
    (ML1M, 4, "8::10::2::-978300275", "Timestamp"),
    (ML1M, 4, "8::11::2::978300275", "MovieID"),
    (ML1M, 5, "7::10::1::978300761", "MovieID"),
    (CSV, 3, "1,2,3.5", "timestamp"),
    (CSV, 4, "2,one,5.0,1445714835", "movieId"),
    (CSV, 5, "2,5,0.0,1445714900", "rating"),
    (CSV, 5, "2,5,,1445714900", "rating"),
    (CSV, 6, "3,3,2.5,1.5e9x", "timestamp"),
    (CSV, 6, "3,42,2.5,1500000000", "movieId"),
    (CSV, 7, "1,1,1.0,964982704", "movieId"),
    (CSV, 1, "userId,movieId,rating", "header"),
    (LASTFM, 2, "2\t101", "weight"),
    (LASTFM, 3, "2\t102\tmany", "weight"),
    (LASTFM, 4, "3\t101\t0", "weight"),
    (LASTFM, 5, "x4\t103\t1", "userID"),
    (LASTFM, 5, "4\t104\t1", "artistID"),
    (LASTFM, 6, "2\t102\t1", "artistID"),
    (LASTFM, 1, "user\tartist\tweight", "header"),
]


@pytest.mark.parametrize(("fmt", "line", "text", "field"), BAD_LINES)
def test_bad_interaction_line_names_file_line_field(
    tmp_path: Path, fmt: tuple, line: int, text: str, field: str
) -> None:
    folder_name, file_name, _ = fmt
    error = load_bad_line(tmp_path, fmt, file_name, line, text, field)
    assert (error.line, error.field) == (line, field)
    assert error.path == str(tmp_path / folder_name / file_name)


def test_duplicate_names_first_occurrence(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, "ml-100k")
    edit(folder / "u.data", 7, "2\t1\t2\t875000001")
    with pytest.raises(DataFormatError, match=r"duplicate .*\(2, 1\), first on line 3"):
        load_movielens_100k(folder)


def test_line_numbers_count_blank_lines_and_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = copy_fixture(tmp_path, "ml-100k")
    path = folder / "u.data"
    edit(path, 3, "")  # a blank line is skipped, but still counted
    edit(path, 7, "1\t2\t4\t881250999")  # repeats the pair on line 2
    monkeypatch.setattr(datasets.parsing, "_CHUNK_LINES", 2)  # the pair spans chunks
    with pytest.raises(DataFormatError, match=r"line 7, .*first on line 2"):
        load_movielens_100k(folder)
    edit(path, 7, "1\t4\t4\t-1")
    with pytest.raises(DataFormatError) as info:
        load_movielens_100k(folder)
    assert (info.value.line, info.value.field) == (7, "timestamp")


@settings(max_examples=25, deadline=None)
@given(
    st.dictionaries(
        st.tuples(st.integers(0, 50), st.integers(1, 5)),
        st.tuples(st.integers(1, 10), st.integers(0, 2**40)),
        min_size=1,
        max_size=30,
    )
)
def test_csv_round_trip(rows: dict[tuple[int, int], tuple[int, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copy(FIXTURES / "ml-latest-small" / "movies.csv", folder / "movies.csv")
        lines = [f"{u},{i},{r / 2},{t}" for (u, i), (r, t) in rows.items()]
        (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "\n".join(lines))
        ds = load_movielens_csv(folder, "ml-latest-small")
    expected = {(u, i, r / 2, t) for (u, i), (r, t) in rows.items()}
    assert pairs(ds) == expected


BAD_CATALOG = [
    (ML100K, "u.item", 2, "2|Beta|15-Mar-1994||http://x|0|1", "Adventure"),
    (ML100K, "u.item", 3, "3|Gamma|20-Sep-1996||u|0|0|0|0|0|0|0|0|2|0|0|0|0|0|1|0|0|0|0", "Drama"),
    (
        ML100K,
        "u.item",
        1,
        "1|Alpha|1995-01-01||u|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0",
        "release date",
    ),
    (ML100K, "u.item", 4, "x|unknown||||1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0", "movie id"),
    (ML100K, "u.item", 4, "1|again||||1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0", "movie id"),
    (ML100K, "u.user", 2, "2|45|X|artist|K1A0B", "gender"),
    (ML100K, "u.user", 3, "3|19|F|student", "zip code"),
    (ML100K, "u.genre", 3, "Adventure|7", "genre id"),
    (ML1M, "movies.dat", 2, "20::No genres field", "Genres"),
    (ML1M, "movies.dat", 3, "3O::Zeta (2000)::Drama", "MovieID"),
    (CSV, "movies.csv", 3, "2,Lambda, The (1997),Drama", "genres"),
    (CSV, "movies.csv", 1, "movieId,name,genres", "header"),
    (LASTFM, "artists.dat", 3, "102\tTau\thttp://x", "pictureURL"),
    (LASTFM, "artists.dat", 2, "101\tSigma\tu\tp\textra", "pictureURL"),
]


@pytest.mark.parametrize(("fmt", "file_name", "line", "text", "field"), BAD_CATALOG)
def test_bad_catalogue_line_names_file_line_field(
    tmp_path: Path, fmt: tuple, file_name: str, line: int, text: str, field: str
) -> None:
    load_bad_line(tmp_path, fmt, file_name, line, text, field)


@pytest.mark.parametrize(
    ("fmt", "file_name"),
    [
        (ML100K, "u.data"),
        (ML100K, "u.item"),
        (ML1M, "ratings.dat"),
        (ML1M, "movies.dat"),
        (CSV, "ratings.csv"),
        (CSV, "movies.csv"),
        (LASTFM, "user_artists.dat"),
        (LASTFM, "artists.dat"),
    ],
)
def test_missing_file_is_named(tmp_path: Path, fmt: tuple, file_name: str) -> None:
    folder_name, _, load = fmt
    folder = copy_fixture(tmp_path, folder_name)
    (folder / file_name).unlink()
    with pytest.raises(DataFormatError, match=rf"{file_name}.*missing file; expected"):
        load(folder)


def test_missing_folder_and_empty_table(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such folder"):
        load_movielens_100k(tmp_path / "nowhere")
    folder = copy_fixture(tmp_path, "ml-1m")
    (folder / "ratings.dat").write_text("")
    with pytest.raises(DataFormatError, match="ratings.dat: no data rows"):
        load_movielens_dat(folder, "ml-1m")


def test_invalid_utf8_in_strict_file(tmp_path: Path) -> None:
    folder = copy_fixture(tmp_path, "ml-latest-small")
    path = folder / "movies.csv"
    path.write_bytes(path.read_bytes().replace(b"Omicron", b"Omi\xffcron"))
    with pytest.raises(DataFormatError, match=r"movies.csv, line 5: not valid utf-8"):
        load_movielens_csv(folder, "ml-latest-small")


# ------------------------------------------------------------ registry and paths


def test_registry_names_and_unknown_name() -> None:
    assert set(DATASETS) == {
        "ml-100k",
        "ml-1m",
        "ml-10m",
        "ml-latest-small",
        "ml-20m",
        "ml-25m",
        "ml-32m",
        "lastfm-2k",
    }
    for spec in DATASETS.values():
        assert spec.archive.url.startswith("https://files.grouplens.org/datasets/")
        assert spec.archive.sha256 is None or len(spec.archive.sha256) == 64
    with pytest.raises(ConfigError, match="unknown data set 'ml-7m'"):
        load_dataset("ml-7m", FIXTURES / "ml-1m")


def test_public_api_sorted_and_complete() -> None:
    assert datasets.__all__ == sorted(datasets.__all__)
    for name in datasets.__all__:
        assert getattr(datasets, name) is not None


def test_default_data_dir_and_find_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STAMEN_DATA_DIR", raising=False)
    repo = Path(datasets.__file__).resolve().parents[2]
    assert default_data_dir() == repo.parent / "shared" / "data"
    monkeypatch.setenv("STAMEN_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    assert find_local("ml-100k") is None
    (tmp_path / "hetrec2011-lastfm-2k").mkdir()
    (tmp_path / "ml-10M100K").mkdir()
    assert find_local("lastfm-2k") == tmp_path / "hetrec2011-lastfm-2k"
    assert find_local("ml-10m") == tmp_path / "ml-10M100K"
    assert find_local("ml-100k", FIXTURES) == FIXTURES / "ml-100k"
    with pytest.raises(ConfigError):
        find_local("nope")


# -------------------------------------------------------------------- downloads


def make_zip(tmp_path: Path, folder: str, *, flat: bool = False) -> Path:
    path = tmp_path / "served" / f"{folder}.zip"
    path.parent.mkdir(exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for file in sorted((FIXTURES / folder).iterdir()):
            zf.write(file, file.name if flat else f"{folder}/{file.name}")
    return path


def serve(monkeypatch: pytest.MonkeyPatch, name: str, archive: Archive) -> None:
    monkeypatch.setitem(DATASETS, name, dataclasses.replace(DATASETS[name], archive=archive))


def test_download_verifies_extracts_and_caches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = make_zip(tmp_path, "ml-100k")
    digest = file_sha256(served)
    cache = tmp_path / "cache"
    serve(monkeypatch, "ml-100k", Archive(served.as_uri(), digest, "ml-100k"))
    ds = load_dataset("ml-100k", cache_dir=cache)
    assert pairs(ds) == pairs(load_movielens_100k(FIXTURES / "ml-100k"))
    assert (cache / "ml-100k" / MARKER).read_text().strip() == digest
    assert (cache / "ml-100k.zip").is_file()
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporaries
    served.unlink()  # a second load must not fetch
    assert pairs(load_dataset("ml-100k", cache_dir=cache)) == pairs(ds)


def test_download_checksum_mismatch_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = make_zip(tmp_path, "ml-100k")
    cache = tmp_path / "cache"
    serve(monkeypatch, "ml-100k", Archive(served.as_uri(), "0" * 64, "ml-100k"))
    with pytest.raises(ChecksumError, match=f"differs from the expected {'0' * 64}"):
        load_dataset("ml-100k", cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_download_without_known_digest_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = make_zip(tmp_path, "ml-latest-small")
    cache = tmp_path / "cache"
    calls = []
    monkeypatch.setattr(
        datasets.download, "fetch_url", lambda url, dest: calls.append(url) or fetch_url(url, dest)
    )
    serve(monkeypatch, "ml-32m", Archive(served.as_uri(), None, "ml-latest-small"))
    with pytest.raises(DataError, match="expected_sha256") as info:
        load_dataset("ml-32m", cache_dir=cache)
    assert not isinstance(info.value, ChecksumError) and calls == []
    ds = load_dataset("ml-32m", cache_dir=cache, expected_sha256=file_sha256(served))
    assert ds.name == "ml-32m" and len(ds.interactions) == 5 and len(calls) == 1


def test_download_flat_archive_and_stale_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = make_zip(tmp_path, "hetrec2011-lastfm-2k", flat=True)
    digest = file_sha256(served)
    cache = tmp_path / "cache"
    stale = cache / "hetrec2011-lastfm-2k"
    stale.mkdir(parents=True)
    (stale / MARKER).write_text("f" * 64)  # extracted from some other archive
    serve(
        monkeypatch,
        "lastfm-2k",
        Archive(served.as_uri(), digest, "hetrec2011-lastfm-2k", flat=True),
    )
    ds = load_dataset("lastfm-2k", cache_dir=cache)
    assert len(ds.interactions) == 4
    assert (stale / MARKER).read_text().strip() == digest


def test_download_failure_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = (tmp_path / "absent.zip").as_uri()
    serve(monkeypatch, "ml-1m", Archive(missing, "0" * 64, "ml-1m"))
    with pytest.raises(DataError, match="absent.zip: download failed"):
        load_dataset("ml-1m", cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_fetch_url_hashes_what_it_writes(tmp_path: Path) -> None:
    served = make_zip(tmp_path, "ml-1m")
    dest = tmp_path / "copy.zip"
    assert fetch_url(served.as_uri(), dest) == file_sha256(served)
    assert dest.read_bytes() == served.read_bytes()


# ---------------------------------------------------------------------- synthetic


def test_synthetic_sizes_skew_and_minimum() -> None:
    ds = generate_synthetic(2000, 3000, interactions_per_user=30, seed=1)
    inter = ds.interactions
    assert ds.name == "synthetic"
    assert inter.n_users == 2000 and inter.n_items == 3000 and len(ds.catalog) == 3000
    per_user = np.bincount(inter.user, minlength=2000)
    assert per_user.min() >= 5 and 25 < per_user.mean() < 36 and per_user.std() > 5
    counts = np.sort(np.bincount(inter.item, minlength=3000))[::-1]
    assert counts[:300].sum() / counts.sum() > 0.4  # top 10% of items: far above 10%
    flat = generate_synthetic(2000, 3000, interactions_per_user=30, popularity_skew=0.0, seed=1)
    flat_counts = np.sort(np.bincount(flat.interactions.item, minlength=3000))[::-1]
    assert flat_counts[:300].sum() / flat_counts.sum() < 0.3
    assert set(np.unique(inter.value).tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert len(ds.catalog.genre_names) == 18
    assert all(1 <= len(g) <= 3 for g in ds.catalog.genres)
    assert ((ds.catalog.year >= 1920) & (ds.catalog.year <= 2024)).all()


def test_synthetic_timestamps_increase_per_user_with_ties() -> None:
    inter = generate_synthetic(500, 1000, seed=2).interactions
    order = np.lexsort((inter.timestamp, inter.user))
    same_user = np.diff(inter.user[order]) == 0
    gaps = np.diff(inter.timestamp[order])[same_user]
    assert (gaps >= 0).all() and 0.05 < (gaps == 0).mean() < 0.3
    ds = generate_synthetic(500, 1000, seed=2)
    seen = ds.catalog.first_seen
    rated = np.bincount(ds.interactions.item, minlength=1000) > 0
    assert (seen[~rated] == -1).all() and (seen[rated] > 0).all()


def test_synthetic_reproducible_bit_for_bit() -> None:
    a = generate_synthetic(400, 900, seed=7)
    b = generate_synthetic(400, 900, seed=7)
    c = generate_synthetic(400, 900, seed=8)
    for name in ("user", "item", "value", "timestamp"):
        assert np.array_equal(getattr(a.interactions, name), getattr(b.interactions, name))
    assert a.catalog.genres == b.catalog.genres
    assert np.array_equal(a.catalog.year, b.catalog.year)
    assert not np.array_equal(a.interactions.item, c.interactions.item)


def test_synthetic_small_catalogue_and_bad_arguments() -> None:
    ds = generate_synthetic(50, 12, interactions_per_user=10, n_genres=0, seed=3)
    assert np.bincount(ds.interactions.user).min() >= 5
    assert ds.catalog.genres == ((),) * 12
    with pytest.raises(ConfigError, match="n_items"):
        generate_synthetic(10, 3)
    with pytest.raises(ConfigError, match="interactions_per_user"):
        generate_synthetic(10, 100, interactions_per_user=2)


# ---------------------------------------------------------------------- real data


def test_real_movielens_100k() -> None:
    ds = load_dataset("ml-100k", real_data("ml-100k"))
    inter = ds.interactions
    assert (inter.n_users, inter.n_items, len(inter)) == (943, 1682, 100000)
    assert set(np.unique(inter.value).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    first = (int(inter.user_ids[inter.user[0]]), int(inter.item_ids[inter.item[0]]))
    assert first == (196, 242) and inter.timestamp[0] == 881250949
    assert ds.catalog.titles[0] == "Toy Story (1995)"
    assert ds.catalog.genres[0] == ("Animation", "Children's", "Comedy")
    assert ds.catalog.year[0] == 1995 and int((ds.catalog.year == 0).sum()) == 1
    assert (ds.catalog.first_seen > 0).all()


def test_real_lastfm_2k() -> None:
    ds = load_dataset("lastfm-2k", real_data("hetrec2011-lastfm-2k"))
    inter = ds.interactions
    assert (inter.n_users, inter.n_items, len(inter)) == (1892, 17632, 92834)
    assert inter.timestamp is None and inter.value.min() >= 1
