"""A researcher's own interactions file (CSV, TSV, JSON lines or Parquet) as the same
``Dataset`` the named loaders return, recorded under the file's name.

``DataFileSettings`` (the ``[data]`` table, or ``--data FILE --user-col … --item-col …``)
names the file and its columns; ``load_interactions_file`` reads it and returns the data
set with a ``FileReport`` of what was merged and dropped. The rules:

* **Ids.** A user or item id is text, compared exactly. A column whose ids are all
  integers written plainly (``7``, not ``07`` or ``+7``) has integer ids, ordered as
  numbers. Dense indices follow the sorted ids; ``Interactions.user_ids`` and
  ``item_ids`` keep the mapping back to the file's ids.
* **Values.** ``rating_col``: explicit ratings on any scale (any finite number).
  ``weight_col``: implicit counts or weights (finite and above 0). Neither: 1.0 a row.
* **Duplicates** (one user and item on several rows) are merged, not refused, and
  counted: weights are summed (the time kept is the latest); otherwise the row with the
  latest time is kept (of equal times, the later row in the file), or without a time
  column the first row.
* **Positives.** Every merged (user, item) pair is a positive; with ``min_rating``, only
  those whose value (the rating kept, or the summed weight) is at least ``min_rating``.
  The others are dropped and counted.
* **Minimum counts.** ``min_user_interactions`` and ``min_item_interactions`` are applied
  again and again until every user and item left has that many positives (a k-core); the
  rows, users and items removed are counted.
* **Times.** Numbers are seconds since the epoch (fractions dropped); otherwise ISO 8601
  dates or date-times (UTC unless an offset is given). One column holds one kind.
* **Errors.** A row that does not parse is an error, never skipped: ``DataFormatError``
  names the file, the line (for Parquet, the row, 1-based) and the column. Blank lines of
  text files hold no row.

Flower Datasets' ``NaturalIdPartitioner`` is not used: it groups a Hugging Face
``datasets.Dataset`` by a column, while every Stamen engine already makes one device per
dense user index, so it would add ``datasets`` and ``pyarrow`` (not installed) for a
group-by numpy does in one call.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from stamen.errors import ConfigError, DataError, DataFormatError
from stamen.models.schema import Catalog, Dataset, Interactions
from stamen.simulation.datasets.download import file_sha256
from stamen.simulation.datasets.parsing import decode_text, first_seen

__all__ = [
    "FORMATS",
    "DataFileSettings",
    "FileReport",
    "LoadedFile",
    "file_format",
    "load_interactions_file",
]

#: The formats read, and the file suffixes that imply them.
FORMATS: dict[str, tuple[str, ...]] = {
    "csv": (".csv",),
    "tsv": (".tsv", ".tab"),
    "jsonl": (".jsonl", ".ndjson"),
    "parquet": (".parquet", ".pq"),
}

Format = Literal["csv", "tsv", "jsonl", "parquet"]

#: A column's role and what it is called in messages.
_ROLES = {
    "user": "user",
    "item": "item",
    "rating": "rating",
    "weight": "weight",
    "time": "timestamp",
    "item_id": "item id",
    "title": "title",
    "genres": "genres",
    "year": "release year",
}
_ID_ROLES = ("user", "item", "item_id")
_METADATA_ROLES = ("title", "genres", "year")  # an empty cell or a null: unknown


class DataFileSettings(BaseModel):
    """Your own interactions file and its columns (the ``[data]`` table; see the module
    docstring for the rules)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path | None = Field(
        None, description="your interactions file (CSV, TSV, JSON lines or Parquet)"
    )
    format: Format | None = Field(None, description="csv, tsv, jsonl or parquet; None: by suffix")
    user_col: str | None = Field(None, description="column of the user ids")
    item_col: str | None = Field(None, description="column of the item ids")
    rating_col: str | None = Field(None, description="column of explicit ratings (any scale)")
    weight_col: str | None = Field(
        None, description="column of implicit counts or weights (summed over duplicates)"
    )
    time_col: str | None = Field(None, description="column of times (epoch seconds or ISO 8601)")
    min_rating: float | None = Field(
        None,
        allow_inf_nan=False,
        description="a positive's least rating (or summed weight); None: every row",
    )
    min_user_interactions: int = Field(1, ge=1, description="k-core: a user's least positives")
    min_item_interactions: int = Field(1, ge=1, description="k-core: an item's least positives")
    items_path: Path | None = Field(
        None,
        description="a file of item metadata, one row per item (stamen.simulation.datasets"
        ".items_file)",
    )
    items_format: Format | None = Field(
        None, description="the items file's format; None: by suffix"
    )
    items_id_col: str | None = Field(None, description="the items file's column of item ids")
    title_col: str | None = Field(None, description="the items file's column of titles")
    genres_col: str | None = Field(
        None, description="the items file's column of genres or tags (split on genres_sep)"
    )
    genres_sep: str = Field("|", min_length=1, description="what separates genres in a cell")
    year_col: str | None = Field(
        None, description="the items file's column of release years (or release times)"
    )

    @model_validator(mode="after")
    def _check(self) -> DataFileSettings:
        problems = []
        if self.path is not None and (self.user_col is None or self.item_col is None):
            problems.append(
                "a data file needs its user and item columns (--user-col and --item-col; "
                "user-col and item-col in [data])"
            )
        if self.rating_col is not None and self.weight_col is not None:
            problems.append(
                "give a rating column (explicit ratings) or a weight column (implicit "
                "counts), not both"
            )
        if self.min_rating is not None and self.rating_col is None and self.weight_col is None:
            problems.append("min-rating needs a rating column or a weight column to compare")
        named = [c for c in self.columns().values()]
        repeated = sorted({c for c in named if named.count(c) > 1})
        if repeated:
            problems.append(f"one column in two roles: {', '.join(map(repr, repeated))}")
        metadata = [self.title_col, self.genres_col, self.year_col]
        if self.items_path is not None:
            if self.items_id_col is None:
                problems.append("an items file needs its item id column (--items-id-col)")
            if all(c is None for c in metadata):
                problems.append(
                    "an items file needs at least one of --title-col, --genres-col and --year-col"
                )
            named = list(self.item_columns().values())
            repeated = sorted({c for c in named if named.count(c) > 1})
            if repeated:
                problems.append(
                    f"one items file column in two roles: {', '.join(map(repr, repeated))}"
                )
        elif self.items_id_col is not None or any(c is not None for c in metadata):
            problems.append("item metadata columns need an items file (--items FILE)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def columns(self) -> dict[str, str]:
        """Each given column by role (``user``, ``item``, ``rating``, ``weight``, ``time``)."""
        given = {
            "user": self.user_col,
            "item": self.item_col,
            "rating": self.rating_col,
            "weight": self.weight_col,
            "time": self.time_col,
        }
        return {role: name for role, name in given.items() if name is not None}

    def item_columns(self) -> dict[str, str]:
        """The items file's given columns by role (``item_id``, ``title``, ``genres``,
        ``year``)."""
        given = {
            "item_id": self.items_id_col,
            "title": self.title_col,
            "genres": self.genres_col,
            "year": self.year_col,
        }
        return {role: name for role, name in given.items() if name is not None}


def file_format(path: Path, given: str | None = None) -> Format:
    """The format ``given``, else the one ``path``'s suffix implies; ``ConfigError`` when
    the suffix says nothing."""
    if given is not None:
        if given not in FORMATS:
            raise ConfigError(f"unknown data format {given!r}; known: {', '.join(FORMATS)}")
        return given  # type: ignore[return-value]
    suffix = path.suffix.lower()
    for name, suffixes in FORMATS.items():
        if suffix in suffixes:
            return name  # type: ignore[return-value]
    raise ConfigError(
        f"{path}: cannot tell the format from the suffix {suffix!r}; give --format "
        f"({' | '.join(FORMATS)}; format in [data])"
    )


@dataclass(frozen=True)
class FileReport:
    """What reading the file did: the file (its absolute path, format and SHA-256), rows
    read, ids' kinds, duplicates merged, rows dropped (each ``dropped`` entry: a reason and
    the rows, users and items it removed), and what is left for the run."""

    path: str
    format: str
    sha256: str
    rows: int
    users_in_file: int
    items_in_file: int
    user_ids: str
    item_ids: str
    values: str
    duplicates_merged: int
    duplicate_rule: str
    positive_rule: str
    dropped: list[dict[str, Any]] = field(default_factory=list)
    interactions: int = 0
    users: int = 0
    items: int = 0
    item_metadata: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON values."""
        return asdict(self)

    def lines(self) -> list[str]:
        """The report as a few lines of text, for a terminal."""
        out = [
            f"{self.rows:,} rows read ({self.format}); {self.users_in_file:,} users "
            f"({self.user_ids} ids), {self.items_in_file:,} items ({self.item_ids} ids); "
            f"values: {self.values}",
            f"duplicates merged: {self.duplicates_merged:,} rows ({self.duplicate_rule})",
            f"positives: {self.positive_rule}",
        ]
        for drop in self.dropped:
            out.append(
                f"dropped: {drop['rows']:,} rows, {drop['users']:,} users, {drop['items']:,} "
                f"items: {drop['reason']}"
            )
        if not self.dropped:
            out.append("dropped: none")
        if self.item_metadata is None:
            out.append("item metadata: none (no --items file: titles are the ids)")
        else:
            from stamen.simulation.datasets.items_file import ItemsReport

            out += ItemsReport(**self.item_metadata).lines()
        return out


@dataclass(frozen=True)
class LoadedFile:
    """A file's data set and its report."""

    dataset: Dataset
    report: FileReport


@dataclass
class _Raw:
    """Columns as read, by role, with the 1-based line (Parquet: row) of each row."""

    values: dict[str, list[Any]]
    lines: list[int]


# ------------------------------------------------------------------------------ readers


def _header_problem(path: Path, header: list[str], wanted: dict[str, str]) -> None:
    missing = [(role, name) for role, name in wanted.items() if name not in header]
    if missing:
        names = ", ".join(f"{name!r} ({_ROLES[role]})" for role, name in missing)
        raise DataFormatError(
            f"no column {names} in the header; it has {', '.join(map(repr, header))}",
            path=path,
            line=1,
            field=missing[0][1],
        )
    for name in wanted.values():
        if header.count(name) > 1:
            raise DataFormatError(
                f"the header names column {name!r} {header.count(name)} times",
                path=path,
                line=1,
                field=name,
            )


def _read_delimited(path: Path, sep: str, wanted: dict[str, str]) -> _Raw:
    text = decode_text(path, "utf-8")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    header: list[str] | None = None
    while header is None:
        row = next(reader, None)
        if row is None:
            expected = ", ".join(f"{n!r}" for n in wanted.values())
            raise DataFormatError(
                f"the file is empty; expected a header line naming the columns ({expected})",
                path=path,
            )
        header = row or None
    header_line = reader.line_num
    _header_problem(path, header, wanted)
    index = {role: header.index(name) for role, name in wanted.items()}
    raw = _Raw({role: [] for role in wanted}, [])
    columns = [(raw.values[role], j) for role, j in index.items()]
    end = header_line
    for row in reader:
        line, end = end + 1, reader.line_num
        if not row:
            continue
        if len(row) != len(header):
            column = header[min(len(row), len(header) - 1)]
            raise DataFormatError(
                f"found {len(row)} fields, the header names {len(header)}",
                path=path,
                line=line,
                field=column,
            )
        for values, j in columns:
            values.append(row[j])
        raw.lines.append(line)
    return raw


def _read_jsonl(path: Path, wanted: dict[str, str]) -> _Raw:
    raw = _Raw({role: [] for role in wanted}, [])
    for number, line in enumerate(decode_text(path, "utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFormatError(
                f"not JSON: {err.msg} (character {err.colno})", path=path, line=number
            ) from None
        if not isinstance(record, dict):
            raise DataFormatError(
                f"expected a JSON object, found {type(record).__name__}", path=path, line=number
            )
        for role, name in wanted.items():
            if name not in record:
                keys = ", ".join(map(repr, record)) or "none"
                raise DataFormatError(
                    f"no key {name!r} ({_ROLES[role]}); the object has {keys}",
                    path=path,
                    line=number,
                    field=name,
                )
            raw.values[role].append(_json_value(record[name], role, path, number, name))
        raw.lines.append(number)
    return raw


def _json_value(value: Any, role: str, path: Path, line: int, name: str) -> Any:
    """A JSON value as the text readers give it: ids and titles as text, numbers as they
    are, genres as text or a list of strings, a metadata null as an empty cell; or a
    DataFormatError for a null, a boolean, an array or an object anywhere else."""
    if value is None and role in _METADATA_ROLES:
        return ""
    if role == "genres" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    ok = (str, int) if role in _ID_ROLES else (str, int, float)
    if isinstance(value, bool) or not isinstance(value, ok):
        kind = "null" if value is None else type(value).__name__
        expected = {
            "time": "a number or an ISO 8601 string",
            "year": "a year, a number or an ISO 8601 string",
            "title": "a string",
            "genres": "a string or a list of strings",
        }.get(role, "a string or an integer id" if role in _ID_ROLES else "a number")
        raise DataFormatError(
            f"expected {expected}, found {kind}", path=path, line=line, field=name
        )
    return str(value) if role in (*_ID_ROLES, "title") else value


def _read_parquet(path: Path, wanted: dict[str, str]) -> _Raw:
    try:
        import pyarrow.parquet as pq  # type: ignore[import-not-found]
    except ImportError:
        raise DataError(
            f"{path}: reading Parquet needs the package pyarrow, which is not installed "
            "(pip install pyarrow), or write the table as CSV, TSV or JSON lines"
        ) from None
    try:
        schema = pq.read_schema(path)
    except Exception as err:  # pyarrow's own errors: not a Parquet file, truncated
        raise DataFormatError(f"not a readable Parquet file: {err}", path=path) from None
    _header_problem(path, list(schema.names), wanted)
    table = pq.read_table(path, columns=list(dict.fromkeys(wanted.values())))
    raw = _Raw({}, list(range(1, table.num_rows + 1)))
    for role, name in wanted.items():
        values = table.column(name).to_pylist()
        for row, value in enumerate(values, start=1):
            if isinstance(value, datetime):
                value = value if value.tzinfo else value.replace(tzinfo=UTC)
                values[row - 1] = value.timestamp()
            else:
                values[row - 1] = _json_value(value, role, path, row, name)
        raw.values[role] = values
    return raw


# ------------------------------------------------------------------------- conversions


def _ids(values: list[str], lines: np.ndarray, path: Path, name: str) -> tuple[np.ndarray, str]:
    """The ids as integers when every one is an integer written plainly, else as text."""
    text = np.asarray(values, dtype=str)
    empty = text == ""
    if empty.any():
        row = int(np.argmax(empty))
        raise DataFormatError("empty id", path=path, line=int(lines[row]), field=name)
    try:
        numbers = text.astype(np.int64)
    except (ValueError, OverflowError):
        return text, "string"
    if np.array_equal(numbers.astype(str), text):
        return numbers, "integer"
    return text, "string"


def _numbers(values: list[Any], lines: np.ndarray, path: Path, name: str) -> np.ndarray:
    try:
        numbers = np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError):
        for value, line in zip(values, lines, strict=True):
            try:
                float(value)
            except (ValueError, TypeError):
                raise DataFormatError(
                    f"expected a number, found {value!r}", path=path, line=int(line), field=name
                ) from None
        raise DataFormatError("does not parse as numbers", path=path, field=name) from None
    bad = ~np.isfinite(numbers)
    if bad.any():
        row = int(np.argmax(bad))
        raise DataFormatError(
            f"expected a finite number, found {values[row]!r}",
            path=path,
            line=int(lines[row]),
            field=name,
        )
    return numbers


def _seconds(text: str) -> int:
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return math.floor(moment.timestamp())


def _times(values: list[Any], lines: np.ndarray, path: Path, name: str) -> np.ndarray:
    """Epoch seconds from numbers, or from ISO 8601 text (the first row decides which)."""
    try:
        numbers = np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError):
        numbers = None
    if numbers is not None:
        return np.floor(_numbers(values, lines, path, name)).astype(np.int64)
    try:
        float(values[0])
        numeric = True
    except (ValueError, TypeError):
        numeric = False
    out = np.empty(len(values), np.int64)
    for j, (value, line) in enumerate(zip(values, lines, strict=True)):
        try:
            out[j] = float(value) if numeric else _seconds(str(value))
        except (ValueError, TypeError, OverflowError):
            expected = (
                "seconds since the epoch (as on the first row)"
                if numeric
                else "an ISO 8601 date or date-time like 2024-05-01T12:00:00 (as on the first row)"
            )
            raise DataFormatError(
                f"expected {expected}, found {value!r}", path=path, line=int(line), field=name
            ) from None
    return out


# ---------------------------------------------------------------------- merge and filter


def _merge(
    key: np.ndarray, value: np.ndarray | None, time: np.ndarray | None, *, summed: bool
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The rows kept per (user, item) ``key`` in file order, with their merged values and
    times (see the module docstring's rule)."""
    n = len(key)
    if summed:
        assert value is not None
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        total = np.bincount(inverse, weights=value, minlength=len(first))
        latest = None
        if time is not None:
            latest = np.full(len(first), np.iinfo(np.int64).min, np.int64)
            np.maximum.at(latest, inverse, time)
        order = np.argsort(first, kind="stable")
        return first[order], total[order], None if latest is None else latest[order]
    if time is not None:
        order = np.lexsort((np.arange(n), time, key))
        ranked = key[order]
        last = np.r_[ranked[1:] != ranked[:-1], True]
        rows = np.sort(order[last])
    else:
        _, rows = np.unique(key, return_index=True)
        rows = np.sort(rows)
    return (
        rows,
        None if value is None else value[rows],
        None if time is None else time[rows],
    )


def _k_core(
    user: np.ndarray, item: np.ndarray, *, min_user: int, min_item: int
) -> tuple[np.ndarray, int]:
    """Rows kept when users with fewer than ``min_user`` and items with fewer than
    ``min_item`` rows are removed until none is left; and the passes it took."""
    keep = np.ones(len(user), bool)
    if min_user <= 1 and min_item <= 1:
        return keep, 0
    passes = 0
    while True:
        users = np.bincount(user[keep], minlength=int(user.max(initial=-1)) + 1)
        items = np.bincount(item[keep], minlength=int(item.max(initial=-1)) + 1)
        bad = keep & ((users[user] < min_user) | (items[item] < min_item))
        if not bad.any():
            return keep, passes
        keep &= ~bad
        passes += 1


def _distinct(codes: np.ndarray) -> int:
    return len(np.unique(codes))


def _dropped(reason: str, user: np.ndarray, item: np.ndarray, keep: np.ndarray) -> dict[str, Any]:
    return {
        "reason": reason,
        "rows": int((~keep).sum()),
        "users": _distinct(user) - _distinct(user[keep]),
        "items": _distinct(item) - _distinct(item[keep]),
    }


# ---------------------------------------------------------------------------- the loader


def _read_table(
    given: Path, fmt: str | None, wanted: dict[str, str], rows: str
) -> tuple[Path, Format, _Raw, np.ndarray]:
    """The file ``given`` (``~`` expanded), its format, its ``wanted`` columns and the
    line of each row; a missing file, or one without ``rows`` (a header alone), is a
    ``DataFormatError``."""
    path = given.expanduser()
    found = file_format(path, fmt)
    if not path.is_file():
        raise DataFormatError("no such file", path=path)
    raw = _read(path, found, wanted)
    if not raw.lines:
        raise DataFormatError(f"no {rows} (a header alone, or only blank lines)", path=path)
    return path, found, raw, np.asarray(raw.lines, np.int64)


def _read(path: Path, fmt: Format, wanted: dict[str, str]) -> _Raw:
    if fmt == "csv":
        return _read_delimited(path, ",", wanted)
    if fmt == "tsv":
        return _read_delimited(path, "\t", wanted)
    if fmt == "jsonl":
        return _read_jsonl(path, wanted)
    return _read_parquet(path, wanted)


def load_interactions_file(settings: DataFileSettings) -> LoadedFile:
    """Read ``settings.path`` by the rules of the module docstring into a ``Dataset``
    named after the file, with its ``FileReport``. Raises ``DataFormatError`` (file, line,
    column) for a file or row that does not parse, ``DataError`` when no interaction is
    left after the filters, ``ConfigError`` for an unknown format."""
    if settings.path is None or settings.user_col is None or settings.item_col is None:
        raise ConfigError("a data file needs its path and its user and item columns")
    path, fmt, raw, lines = _read_table(
        settings.path, settings.format, settings.columns(), "data rows"
    )
    user_raw, user_kind = _ids(raw.values["user"], lines, path, settings.user_col)
    item_raw, item_kind = _ids(raw.values["item"], lines, path, settings.item_col)
    value = None
    values = "1.0 a row (no rating or weight column)"
    if settings.rating_col is not None:
        value = _numbers(raw.values["rating"], lines, path, settings.rating_col)
        values = f"ratings from {settings.rating_col!r} ({value.min():g} to {value.max():g})"
    elif settings.weight_col is not None:
        value = _numbers(raw.values["weight"], lines, path, settings.weight_col)
        low = value <= 0
        if low.any():
            row = int(np.argmax(low))
            raise DataFormatError(
                f"a weight counts interactions and must be above 0, found "
                f"{raw.values['weight'][row]!r}",
                path=path,
                line=int(lines[row]),
                field=settings.weight_col,
            )
        values = f"weights from {settings.weight_col!r}, summed over duplicates"
    time = None
    if settings.time_col is not None:
        time = _times(raw.values["time"], lines, path, settings.time_col)

    user_ids, user = np.unique(user_raw, return_inverse=True)
    item_ids, item = np.unique(item_raw, return_inverse=True)
    summed = settings.weight_col is not None
    rows, value, time = _merge(user * len(item_ids) + item, value, time, summed=summed)
    user, item = user[rows], item[rows]
    if summed:
        rule = "weights summed" + (", the latest time kept" if time is not None else "")
    elif time is not None:
        rule = "the row with the latest time kept (equal times: the later row)"
    else:
        rule = "the first row kept (no time column)"
    report = FileReport(
        path=str(path.resolve()),
        format=fmt,
        sha256=file_sha256(path),
        rows=len(lines),
        users_in_file=len(user_ids),
        items_in_file=len(item_ids),
        user_ids=user_kind,
        item_ids=item_kind,
        values=values,
        duplicates_merged=len(lines) - len(rows),
        duplicate_rule=rule,
        positive_rule="every (user, item) pair",
    )
    keep = np.ones(len(user), bool)
    if settings.min_rating is not None:
        assert value is not None
        column = settings.rating_col or settings.weight_col
        what = "rating" if settings.rating_col is not None else "summed weight"
        report = _with(report, positive_rule=f"{what} {column!r} at least {settings.min_rating:g}")
        keep = value >= settings.min_rating
        reason = f"{what} below --min-rating {settings.min_rating:g}"
        report.dropped.append(_dropped(reason, user, item, keep))
    if settings.min_user_interactions > 1 or settings.min_item_interactions > 1:
        core, passes = _k_core(
            user[keep],
            item[keep],
            min_user=settings.min_user_interactions,
            min_item=settings.min_item_interactions,
        )
        limits = [
            f"{what} with fewer than {least} positives"
            for what, least in (
                ("users", settings.min_user_interactions),
                ("items", settings.min_item_interactions),
            )
            if least > 1
        ]
        reason = f"k-core: {' and '.join(limits)}, removed in {passes} passes"
        report.dropped.append(_dropped(reason, user[keep], item[keep], core))
        keep[np.flatnonzero(keep)[~core]] = False
    if not keep.any():
        raise DataError(
            f"{path}: no interactions left after the filters ("
            + "; ".join(d["reason"] for d in report.dropped)
            + ")"
        )
    user, item = user[keep], item[keep]
    value = None if value is None else value[keep]
    time = None if time is None else time[keep]
    users, user = np.unique(user, return_inverse=True)
    items, item = np.unique(item, return_inverse=True)
    interactions = Interactions(
        user=user,
        item=item,
        value=np.ones(len(user), np.float32) if value is None else value,
        timestamp=time,
        user_ids=user_ids[users],
        item_ids=item_ids[items],
        source=str(path),
    )
    titles: tuple[str, ...] = tuple(str(i) for i in interactions.item_ids)
    genres: tuple[tuple[str, ...], ...] = ((),) * len(items)
    year = np.zeros(len(items), np.int64)
    metadata = None
    if settings.items_path is not None:
        from stamen.simulation.datasets.items_file import read_item_metadata

        read = read_item_metadata(settings, interactions.item_ids)
        titles, genres, year, metadata = read.titles, read.genres, read.year, read.report
    catalog = Catalog(
        item_ids=interactions.item_ids,
        titles=titles,
        genres=genres,
        year=year,
        first_seen=first_seen(interactions.item, interactions.timestamp, len(items)),
    )
    report = _with(
        report,
        interactions=len(interactions),
        users=len(users),
        items=len(items),
        item_metadata=None if metadata is None else metadata.as_dict(),
    )
    return LoadedFile(Dataset(name=path.name, interactions=interactions, catalog=catalog), report)


def _with(report: FileReport, **changes: Any) -> FileReport:
    return FileReport(**{**asdict(report), **changes})
