"""Stamen's exception tree, rooted in builtins.

    Exception
    └── StamenError
        ├── DataError (ValueError)          input data is unusable
        │   ├── DataFormatError             a file does not parse: names file, line and field
        │   ├── ChecksumError               a downloaded archive does not match its SHA-256
        │   ├── EventError                  an event an app records is malformed
        │   └── BundleError                 a release bundle does not decode
        ├── ConfigError (ValueError)        a setting is out of range or inconsistent
        ├── CheckpointError                 a checkpoint is missing, corrupt or not this run's
        ├── PublishError                    a release would overwrite one or go back
        ├── RoundFailedError                a deployment's round failed: the run stops
        ├── CertificateError (ValueError)   a certificate request is invalid
        │   └── CertificateExistsError (FileExistsError)
        │                                   files would be overwritten (without ``force``)
        ├── ReleaseError                    a device refused a release; the installed one stays
        │   ├── RollbackError               the release is older than the newest installed
        │   └── ForeignReleaseError         another publisher app, catalogue or model kind
        ├── DeviceClosedError               the device was closed or forgotten
        ├── StoreError                      a device's folder or store cannot be used
        │   ├── NotAStoreError              a non-empty folder that is not a device's
        │   ├── StoreLostError              the device's database is gone or empty
        │   ├── StoreCorruptError           the database is damaged (the key is right)
        │   └── DeviceBusyError             another process or ``Device`` holds the store
        ├── SecureAggregationRequired (RuntimeError)
        │                                   a device refused a training request without SecAgg+
        ├── ProtocolError (ValueError)      a request on the wire is malformed or unknown
        ├── IndexLibraryMissing (ImportError)
        │                                   faiss, for an approximate item index, is absent
        └── PrivacyError
            ├── BudgetExceededError         the (ε, δ) budget would be overspent
            ├── DecryptionError             wrong key, tampered, truncated or unknown-version blob
            ├── SignatureError              a model release does not verify
            └── UpdateBoundError (ValueError)
                                            an update exceeds its clip norm: never masked or sent

Callers catch ``StamenError`` for anything Stamen raises on purpose; a subclass also
derives from a builtin (``ValueError``, ``RuntimeError``, ``FileExistsError``) where the
builtin meaning fits, so generic handlers keep working. Invalid arguments (a negative clip
norm, an update of the wrong shape) raise the builtin ``ValueError``: they are a caller's
mistake, not a Stamen failure.

This module sits below every layer: any Stamen package may import it, and it imports no
Stamen package and never ``flwr``. ``stamen.client`` re-exports what an app catches.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "BudgetExceededError",
    "BundleError",
    "CertificateError",
    "CertificateExistsError",
    "CheckpointError",
    "ChecksumError",
    "ConfigError",
    "DataError",
    "DataFormatError",
    "DecryptionError",
    "DeviceBusyError",
    "DeviceClosedError",
    "EventError",
    "ForeignReleaseError",
    "IndexLibraryMissing",
    "NotAStoreError",
    "PrivacyError",
    "ProtocolError",
    "PublishError",
    "ReleaseError",
    "RollbackError",
    "RoundFailedError",
    "SecureAggregationRequired",
    "SignatureError",
    "StamenError",
    "StoreCorruptError",
    "StoreError",
    "StoreLostError",
    "UpdateBoundError",
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


class EventError(DataError):
    """An event is malformed. ``field`` names the offending field; ``index`` is the
    event's position in a batch (``None`` for a single ``record``)."""

    def __init__(self, message: str, *, field: str, index: int | None = None) -> None:
        self.field = field
        self.index = index
        self.reason = message  # without the field and index
        where = f"field {field!r}" if index is None else f"event {index}, field {field!r}"
        super().__init__(f"{where}: {message}")


class BundleError(DataError):
    """A release bundle does not decode: not a bundle, an unknown format, or inconsistent."""


class ConfigError(StamenError, ValueError):
    """A setting is out of range or inconsistent with another."""


class CheckpointError(StamenError):
    """A checkpoint cannot be read or does not belong to the run resuming from it."""


class PublishError(StamenError):
    """A release was not published: it would overwrite a published release or be older
    than the newest in the folder (releases only move forward)."""


class RoundFailedError(StamenError):
    """A deployment's round failed (the message says why); the run stops, recorded as
    failed (``checkpoints/status.json``)."""


class CertificateError(StamenError, ValueError):
    """A certificate request is invalid (a bad SAN, node name, count or lifetime)."""


class CertificateExistsError(CertificateError, FileExistsError):
    """The output folder already holds files that would be overwritten (without ``force``)."""


class ReleaseError(StamenError):
    """A release was refused (the message says why); the installed release stays."""


class RollbackError(ReleaseError):
    """A release older than the newest one this device has installed was refused."""


class ForeignReleaseError(ReleaseError):
    """A release of another publisher app, catalogue or model kind than the one the device
    pinned at its first release was refused (``apply_release(..., migrate=True)`` moves
    the device to it)."""


class DeviceClosedError(StamenError):
    """The device was closed or forgotten; open it again."""


class StoreError(StamenError):
    """A device's folder or encrypted store cannot be used (the subclass says why)."""


class NotAStoreError(StoreError):
    """``Device.open`` was given a non-empty folder that is not a Stamen device's: a
    device's folder is its own, so Stamen never adopts (or later erases) other files."""


class StoreLostError(StoreError):
    """The folder's marker says a device lives here but its database is missing, empty or
    another device's. Nothing was created: restore from an export, or start over
    explicitly (``Device.start_over``)."""


class StoreCorruptError(StoreError):
    """The device's database is damaged (the key is right: it matches the folder's key
    check). ``path`` names the file."""

    def __init__(self, message: str, *, path: str | Path) -> None:
        self.path = str(path)
        super().__init__(f"{self.path}: {message}")


class DeviceBusyError(StoreError):
    """Another process (or another open ``Device`` in this one) holds the device's store;
    one opener at a time."""


class SecureAggregationRequired(StamenError, RuntimeError):
    """A training request without SecAgg+ reached a device that requires it."""


class PrivacyError(StamenError):
    """Base class of every privacy failure raised by ``stamen.privacy``."""


class DecryptionError(PrivacyError):
    """Encrypted data could not be authenticated or decoded; nothing was returned."""


class SignatureError(PrivacyError):
    """A model release's signature does not verify: the release must not be used."""


class UpdateBoundError(PrivacyError, ValueError):
    """An update is larger than the bound it must keep (a device's clipped update above
    its clip norm): the device refuses to mask and send it, since once masked nobody can
    tell it from an honest one."""


class BudgetExceededError(PrivacyError):
    """Recording more rounds would spend more than the target privacy budget."""


class IndexLibraryMissing(StamenError, ImportError):
    """faiss, which the approximate item index is built on, is not installed (the message
    names the pip package)."""


class ProtocolError(StamenError, ValueError):
    """A request between server and device is malformed or asks for an unknown task."""
