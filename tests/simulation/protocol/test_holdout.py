"""The simulation's held-out items: encrypted one row per file, read back per row, and
refused when the row, the folder or the key is wrong."""

from __future__ import annotations

import numpy as np
import pytest

from stamen.models import DataError
from stamen.privacy import DecryptionError, generate_key
from stamen.simulation.protocol.holdout import read_held_out, write_held_out


def test_held_out_round_trip_and_refusals(tmp_path) -> None:
    key = generate_key()
    write_held_out(
        tmp_path,
        valid=np.array([6, -1]),
        test=np.array([7, -1]),
        negatives=np.array([[8, 9], [-1, -1]]),
        key=key,
    )
    first = read_held_out(tmp_path, 0, key=key)
    assert (first.valid_item, first.test_item, first.negatives.tolist()) == (6, 7, [8, 9])
    assert read_held_out(tmp_path, 1, key=key).test_item == -1
    blob = (tmp_path / "row-1.enc").read_bytes()
    with pytest.raises(DataError, match="row 2 outside"):
        read_held_out(tmp_path, 2, key=key)
    with pytest.raises(DataError, match="not a held-out folder"):
        read_held_out(tmp_path / "nowhere", 0, key=key)
    with pytest.raises(DecryptionError, match="row-0.enc"):
        read_held_out(tmp_path, 0, key=generate_key())
    # a row's blob moved to another row does not authenticate there
    (tmp_path / "row-0.enc").write_bytes(blob)
    with pytest.raises(DecryptionError):
        read_held_out(tmp_path, 0, key=key)
