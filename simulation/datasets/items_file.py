"""Item metadata for your own interactions file: titles, genres or tags, release years.

``--items FILE --items-id-col … --title-col … --genres-col … --year-col …`` (``items_path``
and the other ``items``/``*_col`` keys of the ``[data]`` table) give the catalogue of a
``--data`` run what the named data sets carry: the content features of the two-tower and
sequential models (``stamen.models.two_tower.features``), the pipeline's genre diversity
and the reasons a device gives ("Because you like Comedy"). The rules:

* **One row per item**, in the same formats as the interactions file (CSV, TSV, JSON lines,
  Parquet). An item id is compared as text with the interactions file's item ids (an
  integer id ``7`` is the text ``7``). An id on two rows is an error naming both lines.
* **Titles**: text. An empty cell (or a JSON null): the item's id is its title.
* **Genres or tags**: text split on ``genres_sep`` (default ``|``), each part stripped,
  empty parts left out; in JSON lines and Parquet also a list of strings. Empty: none.
* **Release year**: a year of four digits (1000 to 9999), or a time whose UTC year is
  taken: seconds since the epoch (10,000 or more: ``95`` is neither, and an error) or an
  ISO 8601 date or date-time. Empty: unknown (the year 0 of the catalogue).
* **Matching.** An item of the interactions that the file does not list keeps no
  metadata (its id as title, no genres, year unknown); a row for an item that is not in
  the interactions, or that the filters dropped, is not used. Both are counted in the
  report (``ItemsReport``) that ``stamen data inspect`` prints and ``results.json`` keeps:
  nothing is left out unsaid.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from stamen.errors import ConfigError, DataFormatError
from stamen.simulation.datasets.download import file_sha256
from stamen.simulation.datasets.interactions_file import (
    DataFileSettings,
    _ids,
    _read_table,
    _seconds,
)

__all__ = ["ItemMetadata", "ItemsReport", "read_item_metadata"]


@dataclass(frozen=True)
class ItemsReport:
    """What reading the items file did: the file (absolute path, format, SHA-256), its
    rows, how many of the run's items it describes, the run's items it does not list, its
    rows for items the run does not have, and what each column gave."""

    path: str
    format: str
    sha256: str
    rows: int
    matched: int
    items_without_metadata: int
    rows_unused: int
    titles_missing: int
    genre_names: int
    years_known: int

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON values."""
        return asdict(self)

    def lines(self) -> list[str]:
        """The report as a few lines of text, for a terminal."""
        return [
            f"items file: {self.rows:,} rows ({self.format}); describes {self.matched:,} of "
            f"the run's items",
            f"  the run's items it does not list: {self.items_without_metadata:,} (their id "
            "as title, no genres, year unknown)",
            f"  rows for items not in the run: {self.rows_unused:,} (not used)",
            f"  titles missing: {self.titles_missing:,} (the id used); genres or tags: "
            f"{self.genre_names:,} names; release years known: {self.years_known:,}",
        ]


@dataclass(frozen=True)
class ItemMetadata:
    """The catalogue columns for the run's items, in item-index order, and the report."""

    titles: tuple[str, ...]
    genres: tuple[tuple[str, ...], ...]
    year: np.ndarray
    report: ItemsReport


def _year(value: Any) -> int:
    """The year of one cell (0: empty); ``ValueError`` when it is none of the forms."""
    text = str(value).strip()
    if not text:
        return 0
    if text.isdigit() and len(text) == 4:
        year = int(text)
    else:
        try:
            seconds = float(text)
        except ValueError:
            return datetime.fromtimestamp(_seconds(text), UTC).year
        if not (math.isfinite(seconds) and seconds >= 10_000):  # 95, 1995.5: not a time
            raise ValueError(text)
        year = datetime.fromtimestamp(math.floor(seconds), UTC).year
    if not 1000 <= year <= 9999:
        raise ValueError(text)
    return year


def _years(values: list[Any], lines: np.ndarray, path: Path, name: str) -> np.ndarray:
    """Each row's year (0: empty)."""
    out = np.zeros(len(values), np.int64)
    for j, (value, line) in enumerate(zip(values, lines, strict=True)):
        try:
            out[j] = _year(value)
        except (ValueError, OverflowError, OSError):
            raise DataFormatError(
                "expected a year from 1000 to 9999, seconds since the epoch or an ISO 8601 "
                f"date, found {value!r}",
                path=path,
                line=int(line),
                field=name,
            ) from None
    return out


def _genres(value: Any, sep: str) -> tuple[str, ...]:
    parts = value if isinstance(value, list) else str(value).split(sep)
    return tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))


def read_item_metadata(settings: DataFileSettings, item_ids: np.ndarray) -> ItemMetadata:
    """The metadata of ``item_ids`` (the run's items, in index order) from
    ``settings.items_path``, by the rules of the module docstring.

    Raises:
        DataFormatError: the file, a row or a cell does not parse, or an id repeats
            (file, line and column named).
        ConfigError: the format cannot be told, or no id column is given.
    """
    if settings.items_path is None or settings.items_id_col is None:
        raise ConfigError("an items file needs its path and its item id column")
    path, fmt, raw, lines = _read_table(
        settings.items_path, settings.items_format, settings.item_columns(), "item rows"
    )
    ids, _ = _ids(raw.values["item_id"], lines, path, settings.items_id_col)
    text = ids.astype(str)
    order = np.argsort(text, kind="stable")
    repeated = np.flatnonzero(text[order][1:] == text[order][:-1])
    if len(repeated):
        first, second = order[repeated[0]], order[repeated[0] + 1]
        raise DataFormatError(
            f"item {str(text[second])!r} is on line {int(lines[first])} already; one row per item",
            path=path,
            line=int(lines[second]),
            field=settings.items_id_col,
        )
    wanted_ids = np.asarray(item_ids).astype(str)
    at = np.searchsorted(text[order], wanted_ids)
    at = np.minimum(at, len(order) - 1)
    found = text[order][at] == wanted_ids
    rows = np.where(found, order[at], -1)  # the file's row of each run item, or -1
    n = len(wanted_ids)
    titles = [str(i) for i in wanted_ids]
    titles_missing = 0
    if settings.title_col is not None:
        column = raw.values["title"]
        for i in np.flatnonzero(found):
            title = str(column[rows[i]]).strip()
            if title:
                titles[i] = title
            else:
                titles_missing += 1
    genres: list[tuple[str, ...]] = [()] * n
    if settings.genres_col is not None:
        column = raw.values["genres"]
        for i in np.flatnonzero(found):
            genres[i] = _genres(column[rows[i]], settings.genres_sep)
    year = np.zeros(n, np.int64)
    if settings.year_col is not None:
        years = _years(raw.values["year"], lines, path, settings.year_col)
        year[found] = years[rows[found]]
    report = ItemsReport(
        path=str(path.resolve()),
        format=fmt,
        sha256=file_sha256(path),
        rows=len(lines),
        matched=int(found.sum()),
        items_without_metadata=int((~found).sum()),
        rows_unused=len(lines) - int(found.sum()),
        titles_missing=titles_missing,
        genre_names=len({g for gs in genres for g in gs}),
        years_known=int((year > 0).sum()),
    )
    return ItemMetadata(tuple(titles), tuple(genres), year, report)
