"""Ed25519 signatures over model releases, so a device refuses a tampered global model.

The server signs :func:`release_digest` of the global model's arrays and round number;
a device recomputes the digest from what it received and verifies it with the server's
public key before using the model. Release bundles (files a device installs) are
signed as a whole by :func:`seal_signed` and checked by :func:`open_signed`. Keys are raw
bytes (32 each, ``cryptography``'s raw Ed25519 encoding).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from stamen.errors import SignatureError

__all__ = [
    "SIGNED_MAGIC",
    "generate_signing_key",
    "open_signed",
    "open_signed_with_sha256",
    "release_digest",
    "sign_arrays",
    "seal_signed",
    "sign_release",
    "signed_payload",
    "verify_arrays",
    "verify_release",
]

_DIGEST_DOMAIN = b"stamen/model-release/v1\x00"
_FILE_DOMAIN = b"stamen/signed-file/v1\x00"

#: First bytes of a signed file: ``SIGNED_MAGIC || payload || signature (64 bytes)``.
SIGNED_MAGIC = b"STAMEN-SIGNED\x00v1"
SIGNATURE_BYTES = 64


def generate_signing_key() -> tuple[bytes, bytes]:
    """A fresh Ed25519 key pair as ``(raw private key, raw public key)``, 32 bytes each."""
    private = Ed25519PrivateKey.generate()
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


def sign_release(payload: bytes, *, private_key: bytes) -> bytes:
    """Sign ``payload`` (usually a :func:`release_digest`); returns a 64-byte signature.

    Raises:
        ValueError: ``private_key`` is not a raw 32-byte Ed25519 key.
    """
    return Ed25519PrivateKey.from_private_bytes(bytes(private_key)).sign(bytes(payload))


def verify_release(payload: bytes, signature: bytes, *, public_key: bytes) -> None:
    """Return silently if ``signature`` is the public key's signature of ``payload``.

    Raises:
        SignatureError: the signature does not verify (tampered payload or signature,
            or a different key) or the public key is malformed.
    """
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes(public_key))
    except ValueError as error:
        raise SignatureError(
            f"model release signature does not verify: malformed public key ({error})"
        ) from None
    try:
        key.verify(bytes(signature), bytes(payload))
    except InvalidSignature:
        raise SignatureError(
            "model release signature does not verify: the release was tampered with or "
            "signed by a different key"
        ) from None


def release_digest(arrays: Sequence[np.ndarray], *, round: int) -> bytes:
    """SHA-256 over a canonical encoding of the round number and every array.

    The encoding covers, in order, a domain tag, the round, the number of arrays, and for
    each array its dtype (little-endian form), its shape and its C-order bytes, every
    field length-prefixed; so changing any byte, shape, dtype, the order or the round
    changes the digest, while byte order and memory layout do not.

    Raises:
        ValueError: ``round`` is negative, or an array holds Python objects.
    """
    if isinstance(round, bool) or not isinstance(round, int | np.integer) or round < 0:
        raise ValueError(f"round must be a non-negative integer (got {round!r})")
    digest = hashlib.sha256(_DIGEST_DOMAIN)
    digest.update(struct.pack(">QQ", int(round), len(arrays)))
    for index, array in enumerate(arrays):
        array = np.asarray(array)
        if array.dtype.hasobject:
            raise ValueError(f"array {index} has object dtype and cannot be signed")
        canonical = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        dtype = canonical.dtype.str.encode("ascii")
        digest.update(struct.pack(">Q", len(dtype)) + dtype)
        digest.update(struct.pack(f">Q{canonical.ndim}Q", canonical.ndim, *canonical.shape))
        digest.update(struct.pack(">Q", canonical.nbytes))
        digest.update(canonical.data)
    return digest.digest()


def sign_arrays(arrays: Sequence[np.ndarray], *, round: int, private_key: bytes) -> bytes:
    """Sign the :func:`release_digest` of a global model's ``arrays`` at ``round``."""
    return sign_release(release_digest(arrays, round=round), private_key=private_key)


def verify_arrays(
    arrays: Sequence[np.ndarray], signature: bytes, *, round: int, public_key: bytes
) -> None:
    """Verify a :func:`sign_arrays` signature; raise :class:`SignatureError` if it fails."""
    verify_release(release_digest(arrays, round=round), signature, public_key=public_key)


def _file_digest(body: memoryview) -> bytes:
    return _FILE_DOMAIN + hashlib.sha256(body).digest()


def seal_signed(payload: bytes, *, private_key: bytes) -> bytes:
    """Wrap ``payload`` (a release bundle's bytes) in a signed file: the magic, the
    payload, then an Ed25519 signature of the SHA-256 digest of everything before it
    (the whole file but the signature), under a domain tag."""
    body = SIGNED_MAGIC + bytes(payload)
    return body + sign_release(_file_digest(memoryview(body)), private_key=private_key)


def open_signed(data: bytes, *, public_key: bytes, source: str = "release") -> memoryview:
    """The payload of a :func:`seal_signed` file (a view into ``data``, no copy), after
    verifying its signature.

    Raises:
        SignatureError: the data is not a signed file (unsigned), or its signature does
            not verify under ``public_key`` (tampered, truncated, or signed by another
            key). ``source`` (a file name) starts the message.
    """
    return open_signed_with_sha256(data, public_key=public_key, source=source)[0]


def open_signed_with_sha256(
    data: bytes | memoryview, *, public_key: bytes, source: str = "release"
) -> tuple[memoryview, bytes]:
    """:func:`open_signed`'s payload and the SHA-256 of the whole file (``data``, the
    signature included), from one pass over the bytes: what a device pins as the release
    it installed, without reading a large release twice.

    Raises:
        SignatureError: as :func:`open_signed`.
    """
    body, signature = _signed_parts(data, source)
    running = hashlib.sha256(body)
    signed = _FILE_DOMAIN + running.digest()  # what _file_digest(body) gives
    try:
        verify_release(signed, signature, public_key=public_key)
    except SignatureError as error:
        raise SignatureError(f"{source}: {error}") from None
    running.update(signature)
    return body[len(SIGNED_MAGIC) :], running.digest()


def signed_payload(data: bytes | memoryview, *, source: str = "release") -> memoryview:
    """The payload of a :func:`seal_signed` file WITHOUT verifying its signature: only for
    bytes verified before, by a record their reader trusts (a device's installed
    release, whose file is unchanged since the device verified it).

    Raises:
        SignatureError: the data is not a signed file.
    """
    return _signed_parts(data, source)[0][len(SIGNED_MAGIC) :]


def _signed_parts(data: bytes | memoryview, source: str) -> tuple[memoryview, bytes]:
    """The signed body (magic and payload) and the signature of a signed file."""
    view = memoryview(data).cast("B")
    if bytes(view[: len(SIGNED_MAGIC)]) != SIGNED_MAGIC or len(view) < len(SIGNED_MAGIC) + 64:
        raise SignatureError(f"{source}: unsigned (not a signed Stamen file); refused")
    return view[:-SIGNATURE_BYTES], bytes(view[-SIGNATURE_BYTES:])
