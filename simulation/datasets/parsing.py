"""Parsing machinery shared by the file loaders.

Interaction tables are read twice at most. The fast path hands the whole file to
``numpy.loadtxt`` (a C parser, no Python object per row) and checks value ranges, the
catalogue and duplicate pairs with vectorised numpy. Only when something is wrong does
the slow path walk the file line by line to find the first bad line and raise a
``DataFormatError`` naming the file, the 1-based line number and the field. Catalogue
files are small and always read line by line.
"""

from __future__ import annotations

import io
import itertools
import math
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stamen.errors import DataError, DataFormatError
from stamen.models.schema import Interactions

__all__ = [
    "Column",
    "TableFormat",
    "check_field_count",
    "decode_text",
    "first_seen",
    "parse_int",
    "read_interactions",
    "require_dir",
    "require_file",
    "text_lines",
    "unique_id",
    "year_from_title",
]

_INT = re.compile(r"\s*[+-]?\d+\s*")
_FLOAT = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*")
_TITLE_YEAR = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*(?:\d{4})?)?\)\s*$")


@dataclass(frozen=True)
class Column:
    """One numeric field of an interaction file: its documented name, whether it must be
    an integer, and the inclusive range its values must lie in (``None``: unbounded)."""

    name: str
    integer: bool = True
    low: float | None = None
    high: float | None = None

    def parse(self, text: str) -> int | float:
        """Parse one field strictly; raise ``ValueError`` with the reason on failure."""
        if self.integer:
            if not _INT.fullmatch(text):
                raise ValueError(f"expected an integer, found {text!r}")
            return int(text)
        if not _FLOAT.fullmatch(text):
            raise ValueError(f"expected a number, found {text!r}")
        return float(text)

    def problem(self, value: float) -> str | None:
        """Describe why ``value`` is out of range, or return ``None`` when it is fine."""
        if not math.isfinite(value):
            return f"{value!r} is not finite"
        if self.low is not None and value < self.low:
            return f"{value!r} is below the minimum {self.low!r}"
        if self.high is not None and value > self.high:
            return f"{value!r} is above the maximum {self.high!r}"
        return None

    def bad_mask(self, values: np.ndarray) -> np.ndarray:
        """Vectorised ``problem``: a boolean mask of the rows out of range."""
        bad = ~np.isfinite(values) if values.dtype.kind == "f" else np.zeros(len(values), bool)
        if self.low is not None:
            bad |= values < self.low
        if self.high is not None:
            bad |= values > self.high
        return bad


@dataclass(frozen=True)
class TableFormat:
    """Layout of an interaction file: separator, expected header (``None``: no header
    line) and its columns, of which ``user``, ``item``, ``value`` and ``timestamp`` name
    the positions (``timestamp`` ``None`` for files without times)."""

    sep: str
    header: tuple[str, ...] | None
    columns: tuple[Column, ...]
    user: int = 0
    item: int = 1
    value: int = 2
    timestamp: int | None = 3

    def describe(self) -> str:
        """Human-readable field list, for error messages."""
        names = ", ".join(c.name for c in self.columns)
        return f"{len(self.columns)} fields separated by {self.sep!r} ({names})"


def require_dir(path: str | Path, what: str) -> Path:
    """Return ``path`` as a ``Path`` if it is a folder, else raise ``DataError``."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; expected {what}")
    return folder


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it is a file, else raise ``DataFormatError`` saying what it is."""
    if not path.is_file():
        raise DataFormatError(f"missing file; expected {what}", path=path)
    return path


def decode_text(path: Path, encoding: str) -> str:
    """Read a whole text file. ``encoding`` is ``"utf-8"``, ``"latin-1"``, or
    ``"utf-8|latin-1"`` (UTF-8 when the file decodes as such, else Latin-1: MovieLens
    1M is Latin-1, 10M UTF-8), or ``"utf-8-replace"`` (odd bytes become U+FFFD)."""
    data = path.read_bytes()
    if encoding == "utf-8|latin-1":
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError:
            return data.decode("latin-1")
    if encoding == "utf-8-replace":
        return data.decode("utf-8-sig", errors="replace")
    try:
        return data.decode("utf-8-sig" if encoding == "utf-8" else encoding)
    except UnicodeDecodeError as exc:
        raise DataFormatError(
            f"not valid {encoding} text: {exc.reason} at byte {exc.start}",
            path=path,
            line=data.count(b"\n", 0, exc.start) + 1,
        ) from exc


def text_lines(path: Path, encoding: str, *, skip: int = 0) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` for the non-empty lines of a small text file, 1-based,
    split on ``\\n`` only (a stray control character inside a field stays in the field),
    without the line end, after skipping the first ``skip`` lines."""
    for number, line in enumerate(decode_text(path, encoding).split("\n"), start=1):
        if line.endswith("\r"):
            line = line[:-1]
        if number > skip and line:
            yield number, line


def parse_int(text: str, *, path: Path, line: int, field: str) -> int:
    """Parse an integer id strictly, raising ``DataFormatError`` at ``line``/``field``."""
    if not _INT.fullmatch(text):
        raise DataFormatError(
            f"expected an integer, found {text!r}", path=path, line=line, field=field
        )
    return int(text)


def unique_id(text: str, seen: dict[int, int], *, path: Path, line: int, field: str) -> int:
    """Parse an id like ``parse_int`` and record its line in ``seen``, raising
    ``DataFormatError`` when an earlier line (one in ``seen``) has the same id."""
    value = parse_int(text, path=path, line=line, field=field)
    if value in seen:
        raise DataFormatError(
            f"id {value} repeats the one on line {seen[value]}", path=path, line=line, field=field
        )
    seen[value] = line
    return value


def check_field_count(
    fields: Sequence[str],
    names: Sequence[str],
    layout: str,
    *,
    path: Path,
    line: int,
    too_many: str | None = None,
) -> None:
    """Raise ``DataFormatError`` unless a catalogue line has one field per name; the
    message is ``found N fields, expected M <layout>`` and the field named is the first
    missing one or, when there are too many, ``too_many`` (by default the last name)."""
    if len(fields) < len(names):
        field = names[len(fields)]
    elif len(fields) > len(names):
        field = names[-1] if too_many is None else too_many
    else:
        return
    raise DataFormatError(
        f"found {len(fields)} fields, expected {len(names)} {layout}",
        path=path,
        line=line,
        field=field,
    )


def year_from_title(title: str) -> int:
    """The year of a MovieLens title's trailing ``(YYYY)`` (or ``(YYYY-YYYY)`` for a
    series), 0 when the title carries none."""
    match = _TITLE_YEAR.search(title)
    return int(match.group(1)) if match else 0


def first_seen(item: np.ndarray, timestamp: np.ndarray | None, n_items: int) -> np.ndarray | None:
    """Earliest timestamp of each item's interactions, -1 for items with none; ``None``
    when the table has no timestamps."""
    if timestamp is None:
        return None
    never = np.iinfo(np.int64).max
    out = np.full(n_items, never, dtype=np.int64)
    np.minimum.at(out, item, timestamp)
    out[out == never] = -1
    return out


def _check_header(path: Path, fmt: TableFormat, encoding: str) -> None:
    assert fmt.header is not None
    with path.open("rb") as handle:
        raw = handle.readline()
    text = raw.decode(encoding, errors="replace").lstrip("\ufeff").rstrip("\r\n")
    found = tuple(text.split(fmt.sep))
    if found != fmt.header:
        raise DataFormatError(
            f"expected the header {fmt.sep.join(fmt.header)!r}, found {text!r}",
            path=path,
            line=1,
            field="header",
        )


def _loadtxt(
    source: Path | Iterable[str], fmt: TableFormat, *, skip: int, encoding: str
) -> np.ndarray:
    dtype = [(f"f{j}", "i8" if c.integer else "f8") for j, c in enumerate(fmt.columns)]
    with warnings.catch_warnings():  # an empty table is reported by the caller
        warnings.filterwarnings("ignore", "loadtxt: input contained no data", UserWarning)
        return np.loadtxt(
            source,
            delimiter=fmt.sep if len(fmt.sep) == 1 else "\t",
            comments=None,
            dtype=dtype,
            skiprows=skip,
            ndmin=1,
            encoding=encoding,
        )


def _fast_parse(path: Path, fmt: TableFormat, encoding: str) -> list[np.ndarray]:
    skip = 1 if fmt.header is not None else 0
    if len(fmt.sep) == 1:
        table = _loadtxt(path, fmt, skip=skip, encoding=encoding)
    else:
        # Multi-character separators ("::"): loadtxt takes one character, and a lone ":"
        # in a numeric field must stay an error, so the separator becomes a tab first.
        text = path.read_text(encoding=encoding).replace(fmt.sep, "\t")
        table = _loadtxt(io.StringIO(text), fmt, skip=skip, encoding=encoding)
    return [table[f"f{j}"] for j in range(len(fmt.columns))]


@dataclass(frozen=True)
class _Source:
    """An interaction file with what its rows are checked against."""

    path: Path
    fmt: TableFormat
    item_ids: np.ndarray
    catalog_path: Path
    user_ids: np.ndarray | None
    user_path: Path | None
    encoding: str

    def error(self, message: str, line: int, column: int) -> DataFormatError:
        return DataFormatError(
            message, path=self.path, line=line, field=self.fmt.columns[column].name
        )

    def suspect(self, columns: list[np.ndarray]) -> bool:
        """Whether any row has a value out of range or an unknown user or item."""
        fmt = self.fmt
        if any(c.bad_mask(v).any() for c, v in zip(fmt.columns, columns, strict=True)):
            return True
        if not np.isin(columns[fmt.item], self.item_ids).all():
            return True
        return self.user_ids is not None and not np.isin(columns[fmt.user], self.user_ids).all()


def read_interactions(
    path: Path,
    fmt: TableFormat,
    *,
    item_ids: np.ndarray,
    catalog_path: Path,
    user_ids: np.ndarray | None = None,
    user_path: Path | None = None,
    encoding: str = "utf-8",
) -> Interactions:
    """Read an interaction file into an ``Interactions`` table indexed against the
    catalogue ``item_ids`` (read from ``catalog_path``). With ``user_ids`` every user
    must appear there too. Raises ``DataFormatError`` naming file, line and field for a
    wrong field count, a non-numeric or out-of-range value, an item missing from the
    catalogue, an unknown user, or a repeated (user, item) pair."""
    source = _Source(path, fmt, item_ids, catalog_path, user_ids, user_path, encoding)
    if fmt.header is not None:
        _check_header(path, fmt, encoding)
    try:
        columns = _fast_parse(path, fmt, encoding)
    except (ValueError, UnicodeDecodeError) as exc:
        _locate_error(source)
        raise DataFormatError(f"does not parse: {exc}", path=path) from exc
    if len(columns[0]) == 0:
        raise DataFormatError(f"no data rows; expected {fmt.describe()}", path=path)
    if any(c.bad_mask(v).any() for c, v in zip(fmt.columns, columns, strict=True)) or (
        user_ids is not None and not np.isin(columns[fmt.user], user_ids).all()
    ):
        _locate_error(source)
        raise DataFormatError("inconsistent values (the line check found none)", path=path)
    try:
        return Interactions.from_raw(
            columns[fmt.user],
            columns[fmt.item],
            columns[fmt.value],
            None if fmt.timestamp is None else columns[fmt.timestamp],
            item_ids=item_ids,
            source=str(path),
        )
    except DataError as exc:  # unknown items or repeated pairs: find the line
        _locate_error(source)
        raise DataFormatError(str(exc), path=path) from exc


_CHUNK_LINES = 1 << 20


def _locate_error(source: _Source) -> None:
    """Find the first bad line and raise there; return only when none is found (the
    caller then reports the fast path's own finding).

    The file is re-read in chunks of lines, each parsed by ``loadtxt`` and checked with
    numpy; only a chunk that fails is walked line by line. Per-line problems (field
    count, number syntax, range, unknown item or user) are reported at the first line
    that has one; a repeated (user, item) pair, which spans chunks, after that."""
    fmt = source.fmt
    users, items, lines = [], [], []
    with source.path.open(encoding=source.encoding, errors="replace") as handle:
        number = 0
        if fmt.header is not None:
            handle.readline()
            number = 1
        while chunk := list(itertools.islice(handle, _CHUNK_LINES)):
            text = [line.replace(fmt.sep, "\t") for line in chunk] if len(fmt.sep) > 1 else chunk
            try:
                table = _loadtxt(text, fmt, skip=0, encoding=source.encoding)
                columns = [table[f"f{j}"] for j in range(len(fmt.columns))]
                ok = not source.suspect(columns)
            except ValueError:
                ok = False
            if not ok:
                _check_lines(source, chunk, number)
            else:
                users.append(columns[fmt.user])
                items.append(columns[fmt.item])
                kept = [j for j, line in enumerate(chunk, start=number + 1) if line != "\n"]
                lines.append(np.asarray(kept, dtype=np.int64))
            number += len(chunk)
    if users:
        _locate_duplicate(
            source, np.concatenate(users), np.concatenate(items), np.concatenate(lines)
        )


def _check_lines(source: _Source, chunk: list[str], before: int) -> None:
    """Check the lines of ``chunk`` (numbered from ``before + 1``) one by one."""
    fmt = source.fmt
    n_fields = len(fmt.columns)
    known_items = set(source.item_ids.tolist())
    known_users = None if source.user_ids is None else set(source.user_ids.tolist())
    for number, raw in enumerate(chunk, start=before + 1):
        text = raw.rstrip("\r\n")
        if not text:
            continue
        fields = text.split(fmt.sep)
        if len(fields) < n_fields:
            message = f"found {len(fields)} fields, expected {fmt.describe()}"
            raise source.error(message, number, len(fields))
        if len(fields) > n_fields:
            message = (
                f"found {len(fields)} fields, extra text after the last field; "
                f"expected {fmt.describe()}"
            )
            raise source.error(message, number, n_fields - 1)
        values = []
        for j, (column, field) in enumerate(zip(fmt.columns, fields, strict=True)):
            try:
                value = column.parse(field)
            except ValueError as exc:
                raise source.error(str(exc), number, j) from None
            problem = column.problem(value)
            if problem is not None:
                raise source.error(problem, number, j)
            values.append(value)
        if values[fmt.item] not in known_items:
            message = f"item {values[fmt.item]} is not in the catalogue {source.catalog_path.name}"
            raise source.error(message, number, fmt.item)
        if known_users is not None and values[fmt.user] not in known_users:
            name = source.user_path.name if source.user_path is not None else "the user file"
            raise source.error(f"user {values[fmt.user]} is not in {name}", number, fmt.user)


def _locate_duplicate(
    source: _Source, users: np.ndarray, items: np.ndarray, lines: np.ndarray
) -> None:
    if len(users) < 2:
        return
    _, user = np.unique(users, return_inverse=True)
    item_ids, item = np.unique(items, return_inverse=True)
    key = user.astype(np.int64) * len(item_ids) + item
    order = np.argsort(key, kind="stable")  # stable: file order within a key
    repeat = np.flatnonzero(key[order][1:] == key[order][:-1])
    if len(repeat) == 0:
        return
    second = order[repeat + 1]
    row = int(second[np.argmin(lines[second])])
    first_row = int(order[np.searchsorted(key[order], key[row])])
    message = (
        f"duplicate (user, item) pair ({users[row]}, {items[row]}), first on line "
        f"{lines[first_row]}"
    )
    raise source.error(message, int(lines[row]), source.fmt.item)
