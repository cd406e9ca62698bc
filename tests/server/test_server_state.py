"""The server's state: its optimisers, checkpoints that resume the same trajectory, and the
signed releases it publishes."""

from __future__ import annotations

import numpy as np
import pytest

from stamen.models import (
    CheckpointError,
    LocalSettings,
    ReleaseBundle,
    ReleaseCatalog,
)
from stamen.models.mf.model import MFModel
from stamen.privacy import (
    SignatureError,
    generate_signing_key,
    open_signed,
)
from stamen.server import ReleaseWriter, latest_release, load_or_create_signing_key
from stamen.server.checkpoint import Checkpoint, CheckpointStore
from stamen.server.optimizer import ServerOptimizer, ServerOptimizerSettings
from stamen.server.rounds import RoundRecord


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
            round=2,
            server_state=first.state_dict(),
            history=[RoundRecord(round=2, devices=4)],
            fingerprint={"dim": 2},
        )
    )
    loaded = store.latest()
    assert loaded is not None and loaded.round == 2
    assert loaded.history == [RoundRecord(round=2, devices=4)]
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
