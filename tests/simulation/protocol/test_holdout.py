"""The simulation's held-out items: encrypted one row per file, read back per row, and
refused when the row, the folder or the key is wrong."""

from __future__ import annotations

import numpy as np
import pytest

from stamen.models import DataError
from stamen.models.batches import UserItems
from stamen.privacy import DecryptionError, generate_key
from stamen.simulation.protocol.holdout import read_held_out, write_held_out
from stamen.simulation.protocol.split import Split


def test_held_out_round_trip_and_refusals(tmp_path) -> None:
    key = generate_key()
    split = Split(
        train=UserItems(indptr=np.array([0, 2, 3, 4]), items=np.array([1, 2, 3, 4]), n_items=12),
        valid=np.array([[5, 6], [-1, -1], [10, -1]]),
        test=np.array([[7, 0], [-1, -1], [11, -1]]),
        negatives=np.array([[8, 9], [-1, -1], [8, 9]]),
        seed=0,
    )
    write_held_out(tmp_path, split, key=key)
    first = read_held_out(tmp_path, 0, key=key)
    assert [first.valid.tolist(), first.test.tolist(), first.negatives.tolist()] == [
        [5, 6],
        [7, 0],
        [8, 9],
    ]
    assert read_held_out(tmp_path, 2, key=key).test.tolist() == [11]  # padding dropped
    assert not read_held_out(tmp_path, 1, key=key).evaluable
    blob = (tmp_path / "row-1.enc").read_bytes()
    with pytest.raises(DataError, match="row 3 outside"):
        read_held_out(tmp_path, 3, key=key)
    with pytest.raises(DataError, match="not a held-out folder"):
        read_held_out(tmp_path / "nowhere", 0, key=key)
    with pytest.raises(DecryptionError, match="row-0.enc"):
        read_held_out(tmp_path, 0, key=generate_key())
    # a row's blob moved to another row does not authenticate there
    (tmp_path / "row-0.enc").write_bytes(blob)
    with pytest.raises(DecryptionError):
        read_held_out(tmp_path, 0, key=key)
