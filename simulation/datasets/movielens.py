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
from pathlib import Path

import numpy as np

from stamen.errors import DataFormatError
from stamen.models.schema import Catalog, Dataset, UserAttributes
from stamen.simulation.datasets.parsing import (
    Column,
    TableFormat,
    decode_text,
    first_seen,
    parse_int,
    read_interactions,
    require_dir,
    require_file,
    text_lines,
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
_RATINGS_DAT = TableFormat(
    sep="::",
    header=None,
    columns=(
        Column("UserID", low=0),
        Column("MovieID", low=0),
        Column("Rating", integer=False, low=0.5, high=5.0),
        Column("Timestamp", low=0),
    ),
)
_RATINGS_CSV = TableFormat(
    sep=",",
    header=("userId", "movieId", "rating", "timestamp"),
    columns=(
        Column("userId", low=0),
        Column("movieId", low=0),
        Column("rating", integer=False, low=0.5, high=5.0),
        Column("timestamp", low=0),
    ),
)


def _dataset(
    name: str,
    ratings_path: Path,
    fmt: TableFormat,
    movies_path: Path,
    movies: tuple[list[int], list[str], list[tuple[str, ...]], list[int]],
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


def _check_new_id(seen: dict[int, int], movie_id: int, path: Path, line: int, field: str) -> None:
    if movie_id in seen:
        raise DataFormatError(
            f"id {movie_id} repeats the one on line {seen[movie_id]}",
            path=path,
            line=line,
            field=field,
        )
    seen[movie_id] = line


# ---------------------------------------------------------------------------- ML-100K


def _read_u_genre(path: Path) -> tuple[str, ...]:
    names: list[str] = []
    for number, line in text_lines(path, "latin-1"):
        fields = line.split("|")
        if len(fields) != 2:
            raise DataFormatError(
                f"found {len(fields)} fields, expected 2 (genre, genre id) separated by '|'",
                path=path,
                line=number,
                field="genre id" if len(fields) < 2 else "genre",
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


def _read_u_item(path: Path, genre_names: tuple[str, ...]):
    n_fields = 5 + len(genre_names)
    ids: list[int] = []
    titles: list[str] = []
    genres: list[tuple[str, ...]] = []
    years: list[int] = []
    seen: dict[int, int] = {}
    names = ("movie id", "movie title", "release date", "video release date", "IMDb URL")
    for number, line in text_lines(path, "latin-1"):
        fields = line.split("|")
        if len(fields) != n_fields:
            where = (names + genre_names)[min(len(fields), n_fields - 1)]
            raise DataFormatError(
                f"found {len(fields)} fields, expected {n_fields} separated by '|' "
                f"(5 movie fields and {len(genre_names)} genre flags)",
                path=path,
                line=number,
                field=where,
            )
        movie_id = parse_int(fields[0], path=path, line=number, field="movie id")
        _check_new_id(seen, movie_id, path, number, "movie id")
        flags = fields[5:]
        for genre, flag in zip(genre_names, flags, strict=True):
            if flag not in ("0", "1"):
                raise DataFormatError(
                    f"genre flag must be 0 or 1, found {flag!r}",
                    path=path,
                    line=number,
                    field=genre,
                )
        ids.append(movie_id)
        titles.append(fields[1])
        years.append(_year_of_release(fields[2], path, number))
        genres.append(tuple(g for g, f in zip(genre_names, flags, strict=True) if f == "1"))
    if not ids:
        raise DataFormatError("no movies listed", path=path)
    return ids, titles, genres, years


#: Age buckets of the user attributes (MovieLens-1M's): lower edges in years.
AGE_EDGES = (18, 25, 35, 45, 50, 56)


def _read_u_user(path: Path) -> tuple[np.ndarray, UserAttributes]:
    seen: dict[int, int] = {}
    rows: list[tuple[int, str, str]] = []
    for number, line in text_lines(path, "latin-1"):
        fields = line.split("|")
        names = ("user id", "age", "gender", "occupation", "zip code")
        if len(fields) != len(names):
            raise DataFormatError(
                f"found {len(fields)} fields, expected 5 (user id|age|gender|occupation|zip code)",
                path=path,
                line=number,
                field=names[min(len(fields), len(names) - 1)],
            )
        user = parse_int(fields[0], path=path, line=number, field="user id")
        _check_new_id(seen, user, path, number, "user id")
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


def _read_movies_dat(path: Path):
    ids: list[int] = []
    titles: list[str] = []
    genres: list[tuple[str, ...]] = []
    years: list[int] = []
    seen: dict[int, int] = {}
    names = ("MovieID", "Title", "Genres")
    for number, line in text_lines(path, "utf-8|latin-1"):
        fields = line.split("::")
        if len(fields) != 3:
            raise DataFormatError(
                f"found {len(fields)} fields, expected 3 (MovieID::Title::Genres)",
                path=path,
                line=number,
                field=names[min(len(fields), 2)],
            )
        _add_movie(fields, (ids, titles, genres, years), seen, path, number, ("MovieID", "Genres"))
    if not ids:
        raise DataFormatError("no movies listed", path=path)
    return ids, titles, genres, years


def _add_movie(
    fields: list[str],
    columns: tuple[list[int], list[str], list[tuple[str, ...]], list[int]],
    seen: dict[int, int],
    path: Path,
    number: int,
    names: tuple[str, str],
) -> None:
    """Parse one (id, title, genres) movie row of either MovieLens format into ``columns``;
    ``names`` are the file's names of the id and genres fields, for error messages."""
    ids, titles, genres, years = columns
    movie_id = parse_int(fields[0], path=path, line=number, field=names[0])
    _check_new_id(seen, movie_id, path, number, names[0])
    ids.append(movie_id)
    titles.append(fields[1])
    years.append(year_from_title(fields[1]))
    genres.append(_split_genres(fields[2], path, number, names[1]))


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


def _read_movies_csv(path: Path):
    ids: list[int] = []
    titles: list[str] = []
    genres: list[tuple[str, ...]] = []
    years: list[int] = []
    seen: dict[int, int] = {}
    reader = csv.reader(io.StringIO(decode_text(path, "utf-8"), newline=""))
    header = next(reader, None)
    if header != ["movieId", "title", "genres"]:
        raise DataFormatError(
            f"expected the header 'movieId,title,genres', found {header!r}",
            path=path,
            line=1,
            field="header",
        )
    names = ("movieId", "title", "genres")
    for row in reader:
        number = reader.line_num
        if not row:
            continue
        if len(row) != 3:
            raise DataFormatError(
                f"found {len(row)} fields, expected 3 (movieId,title,genres; quote titles "
                "holding commas)",
                path=path,
                line=number,
                field=names[min(len(row), 2)],
            )
        _add_movie(row, (ids, titles, genres, years), seen, path, number, ("movieId", "genres"))
    if not ids:
        raise DataFormatError("no movies listed", path=path)
    return ids, titles, genres, years


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
