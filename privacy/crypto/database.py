"""An SQLite database encrypted at rest as a whole file: SQLCipher 4 (``sqlcipher3``).

SQLCipher encrypts every page of the database and of its write-ahead log with AES-256
and authenticates each page with an HMAC, so tables, indexes and metadata are all
unreadable without the key, and a tampered page fails to open. The key is the device's
raw 32-byte key (SQLCipher's ``x'…'`` raw-key form: no passphrase derivation, because
the key already comes from a keystore). Connections run in WAL mode with
``synchronous = FULL``: a committed transaction survives a crash or a killed process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlcipher3 import dbapi2

from stamen.errors import DecryptionError
from stamen.privacy.crypto.encryption import KEY_BYTES

__all__ = ["DatabaseError", "OperationalError", "open_encrypted_database"]

#: The driver's error type (``sqlcipher3.dbapi2.DatabaseError``), for callers' handlers.
DatabaseError = dbapi2.DatabaseError
#: Its subclass for a busy, locked or otherwise unavailable database (not damage).
OperationalError = dbapi2.OperationalError


def open_encrypted_database(path: str | os.PathLike[str], *, key: bytes) -> Any:
    """Open (or create) the SQLCipher database at ``path`` under ``key``.

    The connection is in autocommit mode (``isolation_level=None``: callers open their
    own transactions), usable from several threads (callers serialise access), in WAL mode
    with full synchronous commits, and has been checked to decrypt.

    Raises:
        ValueError: ``key`` is not 32 bytes.
        DecryptionError: the file exists but does not open under ``key`` (a wrong key, a
            plain SQLite file, or a damaged first page); the message names the file.
    """
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
        size = len(key) if isinstance(key, bytes | bytearray) else type(key).__name__
        raise ValueError(f"key must be {KEY_BYTES} bytes (got {size})")
    connection = dbapi2.connect(os.fspath(path), check_same_thread=False, isolation_level=None)
    try:
        connection.execute("PRAGMA cipher_log_level = NONE")
        connection.execute(f"PRAGMA key = \"x'{bytes(key).hex()}'\"")
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        connection.execute("PRAGMA journal_mode = WAL").fetchone()
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("PRAGMA foreign_keys = ON")
    except dbapi2.DatabaseError as error:
        connection.close()
        raise DecryptionError(
            f"{Path(path)}: cannot open the encrypted store ({error}): wrong key, or not a "
            "Stamen store"
        ) from None
    return connection
