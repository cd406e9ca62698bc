"""Authenticated encryption at rest (AES-256-GCM from ``cryptography``) for a device's store.

A blob is ``version (1 byte) || nonce (12 bytes) || ciphertext || tag (16 bytes)``. The
nonce is fresh from ``os.urandom`` for every message, and the version byte is
authenticated along with the caller's associated data, so a blob cannot be relabelled.
Anything that fails to authenticate raises :class:`~stamen.errors.DecryptionError`
and returns nothing: a stolen or tampered store yields no plaintext.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from stamen.errors import DecryptionError

__all__ = [
    "decrypt",
    "decrypt_file",
    "derive_key",
    "encrypt",
    "encrypt_file",
    "generate_key",
    "write_atomically",
    "write_staged",
]

FORMAT_VERSION = 1
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_HEADER_BYTES = 1 + NONCE_BYTES


def generate_key() -> bytes:
    """A fresh random 32-byte AES-256-GCM key."""
    return AESGCM.generate_key(bit_length=8 * KEY_BYTES)


def derive_key(master: bytes, *, purpose: str) -> bytes:
    """A 32-byte key for ``purpose`` (e.g. one simulated device's store) derived from
    ``master`` with HKDF-SHA256; different purposes give independent keys.

    Raises:
        ValueError: ``master`` is not 32 bytes.
    """
    _cipher(master)
    kdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=purpose.encode())
    return kdf.derive(bytes(master))


def _cipher(key: bytes) -> AESGCM:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
        size = len(key) if isinstance(key, bytes | bytearray) else type(key).__name__
        raise ValueError(f"key must be {KEY_BYTES} bytes (got {size})")
    return AESGCM(bytes(key))


def encrypt(plaintext: bytes, *, key: bytes, associated_data: bytes = b"") -> bytes:
    """Encrypt and authenticate ``plaintext``; ``associated_data`` is authenticated, not stored.

    Raises:
        ValueError: ``key`` is not 32 bytes.
    """
    cipher = _cipher(key)
    header = bytes([FORMAT_VERSION]) + os.urandom(NONCE_BYTES)
    return header + cipher.encrypt(header[1:], bytes(plaintext), header[:1] + associated_data)


def decrypt(blob: bytes, *, key: bytes, associated_data: bytes = b"") -> bytes:
    """Authenticate and decrypt a blob made by :func:`encrypt` with the same associated data.

    Raises:
        DecryptionError: the blob is truncated, has an unknown format version, or fails
            authentication (wrong key, wrong associated data, or tampered bytes).
        ValueError: ``key`` is not 32 bytes.
    """
    cipher = _cipher(key)
    blob = bytes(blob)
    if len(blob) < _HEADER_BYTES + TAG_BYTES:
        raise DecryptionError(
            f"encrypted blob is truncated: {len(blob)} bytes, "
            f"at least {_HEADER_BYTES + TAG_BYTES} needed"
        )
    if blob[0] != FORMAT_VERSION:
        raise DecryptionError(
            f"unknown encryption format version {blob[0]} (this build reads {FORMAT_VERSION})"
        )
    try:
        return cipher.decrypt(
            blob[1:_HEADER_BYTES], blob[_HEADER_BYTES:], blob[:1] + associated_data
        )
    except InvalidTag:
        raise DecryptionError(
            "decryption failed: wrong key or associated data, or the data was tampered "
            "with or truncated"
        ) from None


def write_atomically(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, fsync,
    ``chmod mode``, then ``os.replace``. A crash leaves the old file or the new one,
    never a partial write."""
    path = Path(path)
    staged = write_staged(path, data, mode=mode)
    try:
        os.replace(staged, path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise


def write_staged(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600) -> Path:
    """``data`` written, fsynced and ``chmod mode`` under a temporary name beside ``path``
    (``.<name>.<random>.tmp``), ready for ``os.replace`` into ``path`` when the caller
    chooses (:func:`write_atomically` does at once); the caller removes it otherwise."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(name, mode)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def encrypt_file(
    path: str | os.PathLike[str], data: bytes, *, key: bytes, associated_data: bytes = b""
) -> None:
    """Encrypt ``data`` into ``path`` atomically (:func:`write_atomically`, owner
    read/write only)."""
    write_atomically(path, encrypt(data, key=key, associated_data=associated_data))


def decrypt_file(
    path: str | os.PathLike[str], *, key: bytes, associated_data: bytes = b""
) -> bytes:
    """Read and decrypt a file written by :func:`encrypt_file`.

    Raises:
        DecryptionError: as :func:`decrypt`, with the file's path in the message.
        FileNotFoundError: ``path`` does not exist.
    """
    blob = Path(path).read_bytes()
    try:
        return decrypt(blob, key=key, associated_data=associated_data)
    except DecryptionError as error:
        raise DecryptionError(f"{os.fspath(path)}: {error}") from None
