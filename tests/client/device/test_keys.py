"""A device's keys (``stamen.client.device.keys.DeviceKeys``): saved owner-only, loaded
back, and refused when a file is short or missing."""

from __future__ import annotations

import pytest

from stamen.client.device.keys import DeviceKeys
from stamen.models import DataError
from stamen.privacy import generate_key, generate_signing_key


def test_device_keys_round_trip_owner_only_and_refusals(tmp_path) -> None:
    keys = DeviceKeys(store_key=generate_key(), release_key=generate_signing_key()[1])
    folder = keys.save(tmp_path / "keys")
    assert DeviceKeys.load(folder) == keys
    assert sorted(p.name for p in folder.iterdir()) == ["release.pub", "store.key"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in folder.iterdir())
    (folder / "store.key").write_bytes(b"short")
    with pytest.raises(DataError, match=r"store\.key: 5 bytes, expected 32"):
        DeviceKeys.load(folder)
    keys.save(folder)
    (folder / "release.pub").unlink()
    with pytest.raises(DataError, match=r"release\.pub: missing"):
        DeviceKeys.load(folder)
    with pytest.raises(ValueError, match="release_key must be 32 bytes"):
        DeviceKeys(store_key=generate_key(), release_key=b"x")
