"""What a device derives from its release and keeps: large arrays in owner-only files
beside the release, memory-mapped when it reopens, derived again when a file changed,
replaced with the release and removed by ``forget``; the sequential model's reopen builds
no content features."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import numpy as np
import pytest
from helpers.signed_releases import publish_signed, small_mf_release

import stamen.client.device.derived as derived
import stamen.models.two_tower.content as content
from stamen.client import Device
from stamen.client.pipeline.recommend import PipelineSettings
from stamen.models.bundle import ReleaseCatalog
from stamen.models.mf.ials import IALSSolver
from stamen.models.registry import build_model
from stamen.privacy import generate_key, generate_signing_key

PUBLISHER = generate_signing_key()
RETRIEVAL = PipelineSettings.retrieval_only()
EVENTS = [{"item": f"item-{i}", "kind": "play"} for i in range(5)]


@pytest.fixture
def every_array_in_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every derived array counts as large (MF's iALS item side is small otherwise)."""
    monkeypatch.setattr(derived, "LARGE_BYTES", 0)


def _open(folder: Path, key: bytes, release_key: bytes = PUBLISHER[1]) -> Device:
    return Device.open(folder, key=key, release_key=release_key, pipeline=RETRIEVAL)


def _installed(tmp_path: Path) -> tuple[Path, bytes, list[str]]:
    key, folder = generate_key(), tmp_path / "device"
    with _open(folder, key) as device:
        device.apply_release(small_mf_release(1, PUBLISHER[0], n=40))
        device.record_many(EVENTS)
        first = [r.item for r in device.recommend(5)]
    return folder, key, first


def _files(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in folder.glob(derived.DERIVED_GLOB)}


@pytest.mark.usefixtures("every_array_in_files")
def test_large_arrays_are_owner_only_files_that_a_reopen_maps(tmp_path, monkeypatch) -> None:
    folder, key, first = _installed(tmp_path)
    files = _files(folder)
    assert set(files) == {"release.stamen.ials.gram.npy", "release.stamen.ials.base.npy"}
    for path in files.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(folder.glob(".release.stamen.*.tmp"))

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the iALS item side was derived again on a reopen")

    monkeypatch.setattr(IALSSolver, "build", refuse)
    with _open(folder, key) as device:
        assert device.release_error is None
        assert [r.item for r in device.recommend(5)] == first


@pytest.mark.usefixtures("every_array_in_files")
def test_a_changed_file_is_not_read_but_derived_again(tmp_path, caplog) -> None:
    folder, key, first = _installed(tmp_path)
    path = folder / "release.stamen.ials.gram.npy"
    right = np.load(path)
    np.save(path, np.zeros_like(right))  # same shape, other contents: its status changes
    with caplog.at_level(logging.WARNING, logger="stamen.device"), _open(folder, key) as device:
        assert [r.item for r in device.recommend(5)] == first
    assert f"{path}: changed or missing since it was written" in caplog.text
    np.testing.assert_array_equal(np.load(path), right)  # written anew
    path.unlink()  # a lost file: the same
    with _open(folder, key) as device:
        assert [r.item for r in device.recommend(5)] == first
    np.testing.assert_array_equal(np.load(path), right)


@pytest.mark.usefixtures("every_array_in_files")
def test_forget_removes_the_files_and_keeps_the_apps(tmp_path) -> None:
    folder, key, _ = _installed(tmp_path)
    (folder / "settings.json").write_text("{}")
    assert _files(folder)
    with _open(folder, key) as device:
        device.forget()
    assert sorted(p.name for p in folder.iterdir()) == ["settings.json"]


def _catalog(n: int) -> ReleaseCatalog:
    return ReleaseCatalog.build(
        [f"item-{i}" for i in range(n)],
        titles=[f"Title {i} ({1990 + i % 10})" for i in range(n)],
        genres=[["Action"] if i % 2 else ["Romance"] for i in range(n)],
        year=[1990 + i % 10 for i in range(n)],
    )


def test_a_sequential_release_reopens_without_its_content_features(tmp_path, monkeypatch) -> None:
    # 4,200 items of 64 dimensions: the item embeddings (1.1 MB) are large
    model = build_model("sequential", {"dim": 64, "hidden": 32}, _catalog(4200))
    shared = model.init_shared(0)
    release, public = publish_signed(tmp_path, model, shared)
    key, folder = generate_key(), tmp_path / "device"
    with _open(folder, key, public) as device:
        device.apply_release(release)
        device.record_many(EVENTS)
        first = [(r.item, r.score) for r in device.recommend(5)]
    assert set(_files(folder)) == {"release.stamen.items.embedding.npy"}

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("content features built on a reopen")

    monkeypatch.setattr(content, "item_features", refuse)
    with _open(folder, key, public) as device:
        assert device.release_error is None
        assert [(r.item, r.score) for r in device.recommend(5)] == first
        # a new record recomputes the user state from the kept embeddings
        device.record("item-7", "play")
        assert device.recommend(5)


@pytest.mark.usefixtures("every_array_in_files")
def test_a_migration_to_another_model_removes_the_previous_models_files(tmp_path) -> None:
    catalog = _catalog(40)
    mf = build_model("mf", {"dim": 4, "loss": "ials"}, catalog)
    first, public = publish_signed(tmp_path, mf, mf.init_shared(0), 1)
    sequential = build_model("sequential", {"dim": 8, "hidden": 16}, catalog)
    second, _ = publish_signed(tmp_path, sequential, sequential.init_shared(0), 2)
    folder = tmp_path / "device"
    with _open(folder, generate_key(), public) as device:
        device.apply_release(first)
        device.record_many(EVENTS)
        assert set(_files(folder)) == {
            "release.stamen.ials.gram.npy",
            "release.stamen.ials.base.npy",
        }
        device.apply_release(second, migrate=True)
        assert device.release.model == "sequential"
        assert device.recommend(3)
        assert set(_files(folder)) == {
            "release.stamen.items.embedding.npy",
            "release.stamen.items.bias.npy",
        }
