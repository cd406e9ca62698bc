"""Provisioning a simulated run: one encrypted virtual device per row of the split,
holding its training items only, under its own key, with release 0 installed."""

from __future__ import annotations

import numpy as np
import pytest

from stamen.client.device.device import Device
from stamen.models import UserItems
from stamen.privacy import DecryptionError, generate_key, generate_signing_key
from stamen.simulation.config import load_config
from stamen.simulation.engines.flower import provision_run
from stamen.simulation.protocol.split import Split


def test_provisioned_devices_hold_their_training_items_and_nothing_else(tmp_path) -> None:
    train = UserItems(indptr=np.array([0, 2, 5]), items=np.array([1, 2, 3, 4, 5]), n_items=10)
    split = Split(
        train=train,
        valid=np.array([[6], [-1]]),
        test=np.array([[7], [-1]]),
        negatives=np.array([[8, 9], [-1, -1]]),
        seed=0,
    )
    config = load_config(None, {"local": {"dim": 4}})
    private, public = generate_signing_key()
    writer, provisioned = provision_run(
        config,
        split,
        catalog=None,
        output=tmp_path,
        signing_key=(private, public),
        master_key=generate_key(),
    )
    assert (tmp_path / "releases" / "release-000000.stamen").is_file()
    assert sorted(p.name for p in provisioned.devices.folder.iterdir()) == [
        "device-000000",
        "device-000001",
    ]
    for row, expected in [(0, [1, 2]), (1, [3, 4, 5])]:
        with provisioned.devices.open(row) as device:
            assert device.item_indices().tolist() == expected
            assert device.release is not None and device.release.number == 0
            # the held-out items are the protocol's, not the device's
            assert {e.item for e in device.history()} == {str(i) for i in expected}
    assert provisioned.held_out(0).test.tolist() == [7]
    # each device has its own key: one device's key does not open another's store
    with pytest.raises(DecryptionError):
        Device.open(provisioned.devices.path(1), key=provisioned.devices.key(0))
