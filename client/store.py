"""The device's local store of interactions, as read by the ClientApp.

A store is a folder of numpy arrays holding one or more users' data (a simulation writes
one store for the whole population and each virtual device reads only its own row; a real
device holds a store with its own row only):

    train_indptr.npy, train_items.npy   compressed rows of training items
    valid.npy, test.npy                 the held-out items (-1: none)
    negatives.npy                       fixed sampled negatives, (rows, n_neg) (-1: none)
    meta.json                           {"n_items": ..., "rows": ..., "format": 1}

Arrays are memory-mapped, so a device reads its own row without loading anyone else's.

With a ``key`` the store is encrypted at rest instead (AES-256-GCM, ``stamen.privacy``):
each row is one authenticated blob ``row-<i>.enc`` holding that device's arrays, bound to
its row number, so a device decrypts only its own data and a blob moved to another row,
tampered with, or read with the wrong key yields nothing. ``meta.json`` then says
``"encrypted": true``; reading it without the key (or a plain store with one) is an error.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stamen.models import DataError
from stamen.models.batches import UserItems
from stamen.privacy import decrypt_file, encrypt_file

__all__ = ["DeviceData", "read_device_data", "write_store"]

_FORMAT = 1


@dataclass(frozen=True)
class DeviceData:
    """One device's own data: training items, held-out items and sampled negatives."""

    train_items: np.ndarray
    valid_item: int
    test_item: int
    negatives: np.ndarray
    n_items: int

    @property
    def evaluable(self) -> bool:
        """Whether the device holds validation and test items."""
        return self.test_item >= 0 and self.valid_item >= 0


def write_store(
    folder: Path,
    *,
    train: UserItems,
    valid: np.ndarray,
    test: np.ndarray,
    negatives: np.ndarray,
    key: bytes | None = None,
) -> Path:
    """Write a store for ``train.n_users`` rows into ``folder`` (created if needed);
    encrypted at rest when ``key`` (32 bytes, ``stamen.privacy.generate_key``) is given."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = train.n_users
    if not (len(valid) == len(test) == len(negatives) == rows):
        raise DataError("store columns differ in length")
    if key is not None:
        for row in range(rows):
            buffer = io.BytesIO()
            np.savez(
                buffer,
                train_items=train.row(row),
                valid=np.int64(valid[row]),
                test=np.int64(test[row]),
                negatives=np.asarray(negatives[row], np.int64),
            )
            encrypt_file(
                folder / f"row-{row}.enc", buffer.getvalue(), key=key, associated_data=_bound(row)
            )
        meta = {"format": _FORMAT, "n_items": train.n_items, "rows": rows, "encrypted": True}
        (folder / "meta.json").write_text(json.dumps(meta))
        return folder
    np.save(folder / "train_indptr.npy", train.indptr)
    np.save(folder / "train_items.npy", train.items)
    np.save(folder / "valid.npy", np.asarray(valid, np.int64))
    np.save(folder / "test.npy", np.asarray(test, np.int64))
    np.save(folder / "negatives.npy", np.asarray(negatives, np.int64))
    meta = {"format": _FORMAT, "n_items": train.n_items, "rows": rows}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def _bound(row: int) -> bytes:
    """Associated data binding an encrypted row blob to its row."""
    return f"stamen-device-store:{_FORMAT}:row-{row}".encode()


def read_device_data(folder: str | Path, row: int, *, key: bytes | None = None) -> DeviceData:
    """Read row ``row`` of the store in ``folder`` (``key``: the store's encryption key).

    Raises:
        DataError: not a store, unsupported format, row out of range, or the key given
            for a plain store / missing for an encrypted one.
        DecryptionError: the row's blob does not authenticate under ``key``.
    """
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise DataError(f"{folder}: not a Stamen device store (no meta.json)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != _FORMAT:
        raise DataError(f"{meta_path}: unsupported store format {meta.get('format')!r}")
    if not 0 <= row < meta["rows"]:
        raise DataError(f"{folder}: row {row} outside [0, {meta['rows']})")

    encrypted = bool(meta.get("encrypted", False))
    if encrypted and key is None:
        raise DataError(f"{folder}: the store is encrypted at rest; its key is needed")
    if key is not None and not encrypted:
        raise DataError(f"{folder}: a key was given but the store is not encrypted")
    if key is not None:
        blob = decrypt_file(folder / f"row-{row}.enc", key=key, associated_data=_bound(row))
        with np.load(io.BytesIO(blob)) as arrays:
            return DeviceData(
                train_items=arrays["train_items"],
                valid_item=int(arrays["valid"]),
                test_item=int(arrays["test"]),
                negatives=arrays["negatives"],
                n_items=int(meta["n_items"]),
            )

    def load(name: str) -> np.ndarray:
        return np.load(folder / name, mmap_mode="r")

    indptr = load("train_indptr.npy")
    items = np.array(load("train_items.npy")[indptr[row] : indptr[row + 1]])
    return DeviceData(
        train_items=items,
        valid_item=int(load("valid.npy")[row]),
        test_item=int(load("test.npy")[row]),
        negatives=np.array(load("negatives.npy")[row]),
        n_items=int(meta["n_items"]),
    )
