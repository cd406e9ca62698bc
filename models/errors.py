"""Stamen's exception tree, rooted in builtins.

    Exception
    └── StamenError
        ├── DataError (ValueError)
        │   ├── DataFormatError      a file does not parse: names file, line and field
        │   └── ChecksumError        a downloaded archive does not match its SHA-256
        ├── ConfigError (ValueError) a setting is out of range or inconsistent
        └── CheckpointError          a checkpoint is missing, corrupt or does not fit the run

Callers catch ``StamenError`` for anything Stamen raises on purpose; the subclasses also
derive from ``ValueError`` where the builtin meaning fits, so generic handlers keep working.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "CheckpointError",
    "ChecksumError",
    "ConfigError",
    "DataError",
    "DataFormatError",
    "StamenError",
]


class StamenError(Exception):
    """Base class of every error Stamen raises on purpose."""


class DataError(StamenError, ValueError):
    """Input data is unusable (bad values, inconsistent tables, missing files)."""


class DataFormatError(DataError):
    """A data file does not parse. The message names the file, the line and the field."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        where = self.path
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {message}")


class ChecksumError(DataError):
    """A file's SHA-256 digest differs from the one Stamen expects."""


class ConfigError(StamenError, ValueError):
    """A setting is out of range or inconsistent with another."""


class CheckpointError(StamenError):
    """A checkpoint cannot be read or does not belong to the run resuming from it."""
