"""Loaders for the three MovieLens file layouts (GroupLens, https://grouplens.org).

* ML-100K: ``u.data`` (tab-separated ``user id, item id, rating, timestamp``), ``u.item``
  (``|``-separated, Latin-1: id, title, release date, video release date, IMDb URL and 19
  genre flags), ``u.genre`` (genre names, optional) and ``u.user`` (validated only).
* ML-1M and ML-10M: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``) and
  ``movies.dat`` (``MovieID::Title (Year)::Genre1|Genre2``); 1M is Latin-1, 10M UTF-8.
* ML-latest-small, 20M, 25M, 32M: ``ratings.csv`` and ``movies.csv`` with headers.

Each returns a ``Dataset`` whose catalogue follows the movie file's order.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from stamen.errors import DataFormatError
from stamen.models.schema import Catalog, Dataset, UserAttributes
from stamen.simulation.datasets.parsing import (
    Column,
    TableFormat,
    check_field_count,
    decode_text,
    first_seen,
    parse_int,
    read_interactions,
    require_dir,
    require_file,
    text_lines,
    unique_id,
    year_from_title,
)

__all__ = [
    "ML100K_GENRES",
    "load_movielens_100k",
    "load_movielens_csv",
    "load_movielens_dat",
]

#: The 19 genres of ML-100K in flag order, used when ``u.genre`` is absent.
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)

_NO_GENRES = "(no genres listed)"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_RELEASE_DATE = re.compile(r"(\d{1,2})-([A-Za-z]{3})-(\d{4})")

_U_DATA = TableFormat(
    sep="\t",
    header=None,
    columns=(
        Column("user id", low=0),
        Column("item id", low=0),
        Column("rating", low=1, high=5),
        Column("timestamp", low=0),
    ),
)


def _ratings_format(sep: str, names: tuple[str, str, str, str], *, header: bool) -> TableFormat:
    """The ratings file of ML-1M and later: user, movie, a half-star rating from 0.5 to 5
    and a timestamp, under ``names``; ``header``: the file starts with the names."""
    user, movie, rating, timestamp = names
    return TableFormat(
        sep=sep,
        header=names if header else None,
        columns=(
            Column(user, low=0),
            Column(movie, low=0),
            Column(rating, integer=False, low=0.5, high=5.0),
            Column(timestamp, low=0),
        ),
    )


_RATINGS_DAT = _ratings_format("::", ("UserID", "MovieID", "Rating", "Timestamp"), header=False)
_RATINGS_CSV = _ratings_format(",", ("userId", "movieId", "rating", "timestamp"), header=True)

#: A movie file's columns: ids, titles, genres and years, in file order.
_Movies = tuple[list[int], list[str], list[tuple[str, ...]], list[int]]


def _dataset(
    name: str,
    ratings_path: Path,
    fmt: TableFormat,
    movies_path: Path,
    movies: _Movies,
    *,
    genre_names: tuple[str, ...] = (),
    user_ids: np.ndarray | None = None,
    user_path: Path | None = None,
    attributes: UserAttributes | None = None,
) -> Dataset:
    ids, titles, genres, years = movies
    item_ids = np.asarray(ids, dtype=np.int64)
    interactions = read_interactions(
        ratings_path,
        fmt,
        item_ids=item_ids,
        catalog_path=movies_path,
        user_ids=user_ids,
        user_path=user_path,
    )
    catalog = Catalog(
        item_ids=item_ids,
        titles=tuple(titles),
        genres=tuple(genres),
        year=np.asarray(years, dtype=np.int64),
        first_seen=first_seen(interactions.item, interactions.timestamp, len(item_ids)),
        genre_names=genre_names,
    )
    if attributes is not None and user_ids is not None:
        # rows of u.user -> rows of the interaction table's users
        order = {int(u): i for i, u in enumerate(user_ids)}
        rows = np.array([order[int(u)] for u in interactions.user_ids], np.int64)
        attributes = UserAttributes(names=attributes.names, values=attributes.values[rows])
    return Dataset(name=name, interactions=interactions, catalog=catalog, users=attributes)


def _read_movies(
    path: Path,
    rows: Iterable[tuple[int, list[str]]],
    names: tuple[str, ...],
    layout: str,
    details: Callable[[list[str], int], tuple[tuple[str, ...], int]],
) -> _Movies:
    """Read a movie file's ``(line number, fields)`` rows: one field per name (``layout``
    describes them, for errors), a unique id first, the title second, and the genres and
    year that ``details`` finds in the fields. The file must list at least one movie."""
    ids: list[int] = []
    titles: list[str] = []
    genres: list[tuple[str, ...]] = []
    years: list[int] = []
    seen: dict[int, int] = {}
    for number, fields in rows:
        check_field_count(fields, names, layout, path=path, line=number)
        ids.append(unique_id(fields[0], seen, path=path, line=number, field=names[0]))
        titles.append(fields[1])
        movie_genres, year = details(fields, number)
        genres.append(movie_genres)
        years.append(year)
    if not ids:
        raise DataFormatError("no movies listed", path=path)
    return ids, titles, genres, years


# ---------------------------------------------------------------------------- ML-100K


def _read_u_genre(path: Path) -> tuple[str, ...]:
    names: list[str] = []
    for number, line in text_lines(path, "latin-1"):
        fields = line.split("|")
        layout = "(genre, genre id) separated by '|'"
        check_field_count(
            fields, ("genre", "genre id"), layout, path=path, line=number, too_many="genre"
        )
        index = parse_int(fields[1], path=path, line=number, field="genre id")
        if index != len(names):
            raise DataFormatError(
                f"genre ids must count up from 0; expected {len(names)}, found {index}",
                path=path,
                line=number,
                field="genre id",
            )
        if not fields[0]:
            raise DataFormatError("empty genre name", path=path, line=number, field="genre")
        names.append(fields[0])
    if not names:
        raise DataFormatError("no genres listed", path=path)
    return tuple(names)


def _year_of_release(text: str, path: Path, line: int) -> int:
    if not text:
        return 0
    match = _RELEASE_DATE.fullmatch(text)
    if match is None or match.group(2) not in _MONTHS or not 1 <= int(match.group(1)) <= 31:
        raise DataFormatError(
            f"expected a date like 01-Jan-1995 or nothing, found {text!r}",
            path=path,
            line=line,
            field="release date",
        )
    return int(match.group(3))


def _read_u_item(path: Path, genre_names: tuple[str, ...]) -> _Movies:
    def details(fields: list[str], number: int) -> tuple[tuple[str, ...], int]:
        flags = fields[5:]
        for genre, flag in zip(genre_names, flags, strict=True):
            if flag not in ("0", "1"):
                raise DataFormatError(
                    f"genre flag must be 0 or 1, found {flag!r}",
                    path=path,
                    line=number,
                    field=genre,
                )
        genres = tuple(g for g, f in zip(genre_names, flags, strict=True) if f == "1")
        return genres, _year_of_release(fields[2], path, number)

    names = ("movie id", "movie title", "release date", "video release date", "IMDb URL")
    rows = ((number, line.split("|")) for number, line in text_lines(path, "latin-1"))
    layout = f"separated by '|' (5 movie fields and {len(genre_names)} genre flags)"
    return _read_movies(path, rows, names + genre_names, layout, details)


#: Age buckets of the user attributes (MovieLens-1M's): lower edges in years.
AGE_EDGES = (18, 25, 35, 45, 50, 56)


def _read_u_user(path: Path) -> tuple[np.ndarray, UserAttributes]:
    seen: dict[int, int] = {}
    rows: list[tuple[int, str, str]] = []
    for number, line in text_lines(path, "latin-1"):
        fields = line.split("|")
        names = ("user id", "age", "gender", "occupation", "zip code")
        layout = "(user id|age|gender|occupation|zip code)"
        check_field_count(fields, names, layout, path=path, line=number)
        unique_id(fields[0], seen, path=path, line=number, field="user id")
        age = parse_int(fields[1], path=path, line=number, field="age")
        if not 0 < age < 130:
            raise DataFormatError(f"age {age} out of range", path=path, line=number, field="age")
        if fields[2] not in ("M", "F"):
            raise DataFormatError(
                f"expected M or F, found {fields[2]!r}", path=path, line=number, field="gender"
            )
        if not fields[3]:
            raise DataFormatError("empty occupation", path=path, line=number, field="occupation")
        rows.append((age, fields[2], fields[3]))
    if not seen:
        raise DataFormatError("no users listed", path=path)
    return np.fromiter(seen, dtype=np.int64, count=len(seen)), _attributes(rows)


def _attributes(rows: list[tuple[int, str, str]]) -> UserAttributes:
    """One-hot age bucket, gender and occupation per user, in file order."""
    occupations = sorted({o for _, _, o in rows})
    names = (
        [f"age<{AGE_EDGES[0]}"]
        + [f"age {lo}-{hi - 1}" for lo, hi in zip(AGE_EDGES, AGE_EDGES[1:], strict=False)]
        + [f"age>={AGE_EDGES[-1]}"]
        + ["gender=F", "gender=M"]
        + [f"occupation={o}" for o in occupations]
    )
    values = np.zeros((len(rows), len(names)), np.float32)
    for i, (age, gender, occupation) in enumerate(rows):
        values[i, int(np.searchsorted(AGE_EDGES, age, side="right"))] = 1.0
        values[i, len(AGE_EDGES) + 1 + (gender == "M")] = 1.0
        values[i, len(AGE_EDGES) + 3 + occupations.index(occupation)] = 1.0
    return UserAttributes(names=tuple(names), values=values)


def load_movielens_100k(path: str | Path) -> Dataset:
    """Load MovieLens-100K from the folder holding ``u.data`` and ``u.item``.

    Genre names come from ``u.genre`` when present, else the standard 19
    (``ML100K_GENRES``). The year is that of the release date (``01-Jan-1995``), 0 when
    the date is empty. ``u.user`` is optional; when present it is validated, every
    rating's user must be listed in it, and it gives the users' attributes (one-hot age
    bucket, gender and occupation: ``Dataset.users``), which stay on the devices.
    """
    folder = require_dir(path, "the extracted MovieLens-100K folder (ml-100k, with u.data)")
    data = require_file(folder / "u.data", "MovieLens-100K ratings u.data")
    item = require_file(folder / "u.item", "MovieLens-100K movie list u.item")
    genre_file = folder / "u.genre"
    genre_names = _read_u_genre(genre_file) if genre_file.is_file() else ML100K_GENRES
    user_file = folder / "u.user"
    user_ids, attributes = _read_u_user(user_file) if user_file.is_file() else (None, None)
    movies = _read_u_item(item, genre_names)
    return _dataset(
        "ml-100k",
        data,
        _U_DATA,
        item,
        movies,
        genre_names=genre_names,
        user_ids=user_ids,
        user_path=user_file if user_ids is not None else None,
        attributes=attributes,
    )


# ------------------------------------------------------------------ ML-1M and ML-10M


def _split_genres(text: str, path: Path, line: int, field: str) -> tuple[str, ...]:
    if text == _NO_GENRES:
        return ()
    genres = tuple(text.split("|"))
    if any(not g for g in genres):
        raise DataFormatError(f"empty genre name in {text!r}", path=path, line=line, field=field)
    return genres


def _read_titled_movies(
    path: Path, rows: Iterable[tuple[int, list[str]]], names: tuple[str, str, str], layout: str
) -> _Movies:
    """Read (id, title, genres) movie rows, the format of ML-1M and later: ``|``-joined
    genres and the year in the title."""

    def details(fields: list[str], number: int) -> tuple[tuple[str, ...], int]:
        return _split_genres(fields[2], path, number, names[2]), year_from_title(fields[1])

    return _read_movies(path, rows, names, layout, details)


def _read_movies_dat(path: Path) -> _Movies:
    rows = ((number, line.split("::")) for number, line in text_lines(path, "utf-8|latin-1"))
    names = ("MovieID", "Title", "Genres")
    return _read_titled_movies(path, rows, names, "(MovieID::Title::Genres)")


def load_movielens_dat(path: str | Path, name: str) -> Dataset:
    """Load MovieLens-1M or -10M (``name``: ``"ml-1m"`` or ``"ml-10m"``) from the folder
    holding ``ratings.dat`` and ``movies.dat``. The movie file may be UTF-8 or Latin-1;
    the year comes from the title's trailing ``(YYYY)``, 0 when it has none."""
    folder = require_dir(path, f"the extracted {name} folder (with ratings.dat)")
    ratings = require_file(
        folder / "ratings.dat", f"{name} ratings (UserID::MovieID::Rating::Timestamp)"
    )
    movies = require_file(folder / "movies.dat", f"{name} movie list (MovieID::Title::Genres)")
    return _dataset(name, ratings, _RATINGS_DAT, movies, _read_movies_dat(movies))


# ------------------------------------------------------ ML-latest-small, 20M, 25M, 32M


def _read_movies_csv(path: Path) -> _Movies:
    reader = csv.reader(io.StringIO(decode_text(path, "utf-8"), newline=""))
    header = next(reader, None)
    if header != ["movieId", "title", "genres"]:
        raise DataFormatError(
            f"expected the header 'movieId,title,genres', found {header!r}",
            path=path,
            line=1,
            field="header",
        )
    rows = ((reader.line_num, row) for row in reader if row)
    names = ("movieId", "title", "genres")
    layout = "(movieId,title,genres; quote titles holding commas)"
    return _read_titled_movies(path, rows, names, layout)


def load_movielens_csv(path: str | Path, name: str) -> Dataset:
    """Load a CSV-format MovieLens release (``name``: ``"ml-latest-small"``, ``"ml-20m"``,
    ``"ml-25m"`` or ``"ml-32m"``) from the folder holding ``ratings.csv`` and
    ``movies.csv``. ``"(no genres listed)"`` becomes an empty genre tuple; the year comes
    from the title's trailing ``(YYYY)``, 0 when it has none."""
    folder = require_dir(path, f"the extracted {name} folder (with ratings.csv)")
    ratings = require_file(
        folder / "ratings.csv", f"{name} ratings (userId,movieId,rating,timestamp)"
    )
    movies = require_file(folder / "movies.csv", f"{name} movie list (movieId,title,genres)")
    return _dataset(name, ratings, _RATINGS_CSV, movies, _read_movies_csv(movies))
