"""The device step, provisioning of virtual devices and their held-out items, device keys,
and the server optimisers and checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stamen.client.device.device import Device
from stamen.client.device.keys import DeviceKeys
from stamen.models import (
    CheckpointError,
    DataError,
    LocalSettings,
    MatrixFactorization,
    ReleaseBundle,
    ReleaseCatalog,
    UserItems,
)
from stamen.models.mf.local import local_update
from stamen.models.mf.model import MFModel
from stamen.privacy import (
    DecryptionError,
    SignatureError,
    generate_key,
    generate_signing_key,
    open_signed,
)
from stamen.server import ReleaseWriter, latest_release, load_or_create_signing_key
from stamen.server.checkpoint import Checkpoint, CheckpointStore
from stamen.server.optimizer import ServerOptimizer, ServerOptimizerSettings
from stamen.simulation.config import load_config
from stamen.simulation.engines.flower import provision_run
from stamen.simulation.protocol.holdout import read_held_out, write_held_out
from stamen.simulation.protocol.split import Split


def _shared(n_items: int = 40, dim: int = 4) -> list[np.ndarray]:
    return MatrixFactorization(
        1, n_items, dim, generator=torch.Generator().manual_seed(0)
    ).shared_arrays()


@pytest.mark.parametrize("loss", ["ials", "softmax", "bpr"])
def test_local_update_is_dense_and_keeps_the_user_factor_local(loss: str) -> None:
    shared = _shared()
    settings = LocalSettings(dim=4, loss=loss, refresh_steps=3)
    result = local_update(
        shared, None, items=np.array([1, 5, 7]), settings=settings, rng=np.random.default_rng(0)
    )
    assert [d.shape for d in result.delta] == [s.shape for s in shared]
    assert all(d.dtype == np.float32 for d in result.delta)
    assert np.abs(result.delta[0][[1, 5, 7]]).sum() > 0
    assert result.user_factor.shape == (4,)
    assert set(result.metrics) == {"train_loss"}
    again = local_update(
        shared, None, items=np.array([1, 5, 7]), settings=settings, rng=np.random.default_rng(0)
    )
    assert all(np.array_equal(a, b) for a, b in zip(result.delta, again.delta, strict=True))


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


def test_provisioned_devices_hold_their_training_items_and_nothing_else(tmp_path) -> None:
    train = UserItems(indptr=np.array([0, 2, 5]), items=np.array([1, 2, 3, 4, 5]), n_items=10)
    split = Split(
        train=train,
        valid=np.array([6, -1]),
        test=np.array([7, -1]),
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
    assert provisioned.held_out(0).test_item == 7
    # each device has its own key: one device's key does not open another's store
    with pytest.raises(DecryptionError):
        Device.open(provisioned.devices.path(1), key=provisioned.devices.key(0))


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


def test_fedavg_with_unit_server_lr_adds_the_mean_update() -> None:
    start = [np.ones((3, 2), np.float32), np.zeros(3, np.float32)]
    opt = ServerOptimizer(start, ServerOptimizerSettings(name="fedavg", lr=1.0))
    delta = [np.full((3, 2), 0.5, np.float32), np.arange(3, dtype=np.float32)]
    new = opt.step(delta)
    assert np.allclose(new[0], 1.5) and np.allclose(new[1], [0, 1, 2])


def test_server_optimizer_rejects_unknown_names_and_bad_shapes() -> None:
    with pytest.raises(ValueError, match="unknown server optimiser 'fedsgd'"):
        ServerOptimizer([np.zeros(2)], ServerOptimizerSettings(name="fedsgd"))
    opt = ServerOptimizer([np.zeros(2, np.float32)], ServerOptimizerSettings())
    with pytest.raises(ValueError, match="shape"):
        opt.step([np.zeros(3, np.float32)])


def test_checkpoint_round_trip_resumes_the_same_trajectory(tmp_path) -> None:
    rng = np.random.default_rng(0)
    updates = [[rng.normal(size=(4, 2)).astype(np.float32)] for _ in range(4)]
    straight = ServerOptimizer([np.zeros((4, 2), np.float32)], ServerOptimizerSettings())
    for u in updates:
        straight.step(u)
    first = ServerOptimizer([np.zeros((4, 2), np.float32)], ServerOptimizerSettings())
    for u in updates[:2]:
        first.step(u)
    store = CheckpointStore(tmp_path)
    store.save(
        Checkpoint(
            round=2, server_state=first.state_dict(), history=[{"round": 2}], fingerprint={"dim": 2}
        )
    )
    loaded = store.latest()
    assert loaded is not None and loaded.round == 2 and loaded.history == [{"round": 2}]
    resumed = ServerOptimizer([np.zeros((4, 2), np.float32)], ServerOptimizerSettings())
    resumed.load_state_dict(loaded.server_state)
    for u in updates[2:]:
        resumed.step(u)
    assert np.array_equal(resumed.arrays()[0], straight.arrays()[0])
    with pytest.raises(CheckpointError, match="dim: checkpoint 2 vs run 3"):
        CheckpointStore.check_fingerprint(loaded, {"dim": 3})


def test_corrupt_checkpoint_is_reported(tmp_path) -> None:
    (tmp_path / "round-00001.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "latest.json").write_text('{"round": 1, "file": "round-00001.pt"}')
    with pytest.raises(CheckpointError, match="corrupt checkpoint"):
        CheckpointStore(tmp_path).latest()


def test_clear_removes_old_checkpoints(tmp_path) -> None:
    store = CheckpointStore(tmp_path)
    for rnd in (1, 24):
        store.save(Checkpoint(round=rnd, server_state={}, history=[], fingerprint={}))
    store.clear()
    assert store.latest() is None and not list(tmp_path.glob("round-*.pt"))


def test_release_writer_publishes_signed_bundles_and_keeps_its_key(tmp_path) -> None:
    private, public = load_or_create_signing_key(tmp_path / "keys" / "release.key")
    assert (tmp_path / "keys" / "release.key").stat().st_mode & 0o777 == 0o600
    assert load_or_create_signing_key(tmp_path / "keys" / "release.key") == (private, public)
    catalog = ReleaseCatalog.build(["a", "b", "c"], titles=["A", "B", "C"])
    writer = ReleaseWriter(
        tmp_path / "releases",
        private_key=private,
        public_key=public,
        model=MFModel(LocalSettings(dim=2), catalog),
        quantize=True,
    )
    shared = [np.arange(6, dtype=np.float32).reshape(3, 2), np.array([0.5, 2.0, 1.0], np.float32)]
    for number in (1, 2):
        writer.publish(number, shared)
    assert latest_release(writer.folder) == writer.path(2)
    assert (writer.folder / "release.pub").read_bytes() == public
    bundle = ReleaseBundle.decode(open_signed(writer.path(2).read_bytes(), public_key=public))
    assert bundle.release == 2 and bundle.settings["dim"] == 2
    assert bundle.quantized["items.weight"].values.dtype == np.int8
    # popularity is the learned item bias
    assert bundle.popularity.tolist() == [0.5, 2.0, 1.0]
    with pytest.raises(SignatureError):
        open_signed(writer.path(2).read_bytes(), public_key=generate_signing_key()[1])
