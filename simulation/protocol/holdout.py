"""The evaluation protocol's held-out items, one encrypted blob per simulated device.

The protocol (validation and test items, fixed sampled negatives) belongs to the
simulation, not to the device library: a device's own store holds only what the person
did before the held-out items. Each row ``row-<i>.enc`` is one AES-256-GCM blob bound to
its row (``stamen.privacy.encrypt_file``), so a virtual device reads only its own held-out
items, and a moved, tampered or wrongly keyed blob yields nothing.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from stamen.models import DataError
from stamen.privacy import decrypt_file, encrypt_file
from stamen.simulation.protocol.device_evaluation import HeldOut
from stamen.simulation.protocol.split import Split

__all__ = ["read_held_out", "write_held_out"]

_FORMAT = 2  # 2: each row's validation and test items are arrays (1: one item each)


def _bound(row: int) -> bytes:
    return f"stamen-held-out:{_FORMAT}:row-{row}".encode()


def write_held_out(folder: Path, split: Split, *, key: bytes) -> Path:
    """Write every row's held-out items in ``split`` into ``folder`` (created), encrypted
    under ``key``."""
    folder.mkdir(parents=True, exist_ok=True)
    for row in range(split.n_users):
        held = HeldOut.of(split, row)
        buffer = io.BytesIO()
        np.savez(buffer, valid=held.valid, test=held.test, negatives=held.negatives)
        encrypt_file(
            folder / f"row-{row}.enc", buffer.getvalue(), key=key, associated_data=_bound(row)
        )
    (folder / "meta.json").write_text(json.dumps({"format": _FORMAT, "rows": split.n_users}))
    return folder


def read_held_out(folder: str | Path, row: int, *, key: bytes) -> HeldOut:
    """Row ``row``'s held-out items.

    Raises:
        DataError: not a held-out folder, another format, or the row out of range.
        DecryptionError: the row's blob does not authenticate under ``key``.
    """
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise DataError(f"{folder}: not a held-out folder (no meta.json)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != _FORMAT:
        raise DataError(f"{meta_path}: unsupported held-out format {meta.get('format')!r}")
    if not 0 <= row < meta["rows"]:
        raise DataError(f"{folder}: row {row} outside [0, {meta['rows']})")
    blob = decrypt_file(folder / f"row-{row}.enc", key=key, associated_data=_bound(row))
    with np.load(io.BytesIO(blob), allow_pickle=False) as arrays:
        return HeldOut(arrays["valid"], arrays["test"], arrays["negatives"])
