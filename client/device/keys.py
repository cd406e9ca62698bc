"""What a device is provisioned with besides its data: the key its store is encrypted
under and the public key that signs the global models it will accept.

On a phone both would sit in the platform keystore. Where devices are virtual (the
``flwr run`` simulation runtime, whose ServerApp and ClientApps are separate processes)
they are two owner-only files in a folder of their own, kept apart from the store and
never sent in a message; the private signing key never leaves the server's memory.

    store.key     32-byte AES-256-GCM key of the device store
    release.pub   32-byte raw Ed25519 public key of the model releases
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from stamen.models import DataError

__all__ = ["DeviceKeys"]

_FILES = {"store_key": "store.key", "release_key": "release.pub"}
_KEY_BYTES = 32


@dataclass(frozen=True)
class DeviceKeys:
    """A device's store key and the release public key it trusts (raw 32 bytes each)."""

    store_key: bytes
    release_key: bytes

    def __post_init__(self) -> None:
        for field in _FILES:
            value = getattr(self, field)
            if not isinstance(value, bytes) or len(value) != _KEY_BYTES:
                size = len(value) if isinstance(value, bytes) else type(value).__name__
                raise ValueError(f"{field} must be {_KEY_BYTES} bytes (got {size})")

    def save(self, folder: str | Path) -> Path:
        """Write both keys into ``folder`` (created owner-only), each file mode 0600."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for field, name in _FILES.items():
            path = folder / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(getattr(self, field))
            path.chmod(0o600)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> DeviceKeys:
        """Read the keys ``save`` wrote.

        Raises:
            DataError: a key file is missing or not 32 bytes (the error names the file).
        """
        folder = Path(folder)
        keys = {}
        for field, name in _FILES.items():
            path = folder / name
            if not path.is_file():
                raise DataError(f"{path}: missing; this device was not provisioned with keys")
            keys[field] = path.read_bytes()
            if len(keys[field]) != _KEY_BYTES:
                raise DataError(f"{path}: {len(keys[field])} bytes, expected {_KEY_BYTES}")
        return cls(**keys)
