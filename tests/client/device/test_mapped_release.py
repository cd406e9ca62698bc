"""The installed release is memory-mapped, verified once, and what the model derived
from it is kept: reopening reads neither the whole file nor derives again, unless the
file changed since it was installed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers.signed_releases import small_mf_release

import stamen.client.device.releases as releases_module
from stamen.client import Device
from stamen.client.device.releases import RELEASE_FILE
from stamen.client.pipeline.recommend import PipelineSettings
from stamen.models.mf.ials import IALSSolver
from stamen.privacy import SignatureError, generate_key, generate_signing_key

PUBLISHER = generate_signing_key()
RETRIEVAL = PipelineSettings.retrieval_only()


def _open(folder: Path, key: bytes) -> Device:
    return Device.open(folder, key=key, release_key=PUBLISHER[1], pipeline=RETRIEVAL)


def _installed(tmp_path: Path) -> tuple[Path, bytes, list[str]]:
    """A device folder with release 1 and a few events; its key and first list."""
    key, folder = generate_key(), tmp_path / "device"
    with _open(folder, key) as device:
        device.apply_release(small_mf_release(1, PUBLISHER[0], n=40))
        device.record_many([{"item": f"item-{i}", "kind": "play"} for i in range(5)])
        first = [r.item for r in device.recommend(5)]
    return folder, key, first


def _refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
    raise AssertionError("called on a reopen of an unchanged release")


def test_reopening_an_unchanged_release_neither_verifies_nor_derives_again(
    tmp_path, monkeypatch
) -> None:
    folder, key, first = _installed(tmp_path)
    monkeypatch.setattr(releases_module, "open_signed_with_sha256", _refuse)
    monkeypatch.setattr(IALSSolver, "build", _refuse)
    with _open(folder, key) as device:
        assert device.release_error is None and device.release is not None
        assert [r.item for r in device.recommend(5)] == first


def test_the_served_arrays_are_a_copy_on_write_map_of_the_installed_file(tmp_path) -> None:
    folder, key, _ = _installed(tmp_path)
    before = (folder / RELEASE_FILE).read_bytes()
    with _open(folder, key) as device:
        assert device._serving is not None
        factors = device._serving.bundle.arrays["items.weight"]
        assert not factors.flags.owndata and factors.flags.writeable
        factors[:] = 0.0  # private to this process: the file keeps its bytes
    assert (folder / RELEASE_FILE).read_bytes() == before


def test_a_file_rewritten_with_its_times_set_back_is_verified_again(tmp_path) -> None:
    folder, key, _ = _installed(tmp_path)
    path = folder / RELEASE_FILE
    status, raw = path.stat(), bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # inside the arrays: decodes, but the signature fails
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
    with _open(folder, key) as device:
        assert isinstance(device.release_error, SignatureError)
        assert device.release is None


def test_a_copied_back_file_is_verified_again_and_served(tmp_path, monkeypatch) -> None:
    """Another inode with the same bytes (a restored backup) is verified, then served."""
    folder, key, first = _installed(tmp_path)
    path = folder / RELEASE_FILE
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data)
    calls = []
    verify = releases_module.open_signed_with_sha256
    monkeypatch.setattr(
        releases_module,
        "open_signed_with_sha256",
        lambda *a, **k: calls.append(1) or verify(*a, **k),
    )
    with _open(folder, key) as device:
        assert calls and device.release_error is None
        assert [r.item for r in device.recommend(5)] == first
    calls.clear()
    with _open(folder, key) as device:  # verified once: its new status is recorded
        assert not calls and device.release_error is None


def test_an_applied_file_is_verified_as_copied_not_as_read_before(tmp_path) -> None:
    """What is installed is the device's own copy, verified after copying: the source
    changing afterwards changes nothing installed."""
    key, folder = generate_key(), tmp_path / "device"
    source = tmp_path / "release-000001.stamen"
    source.write_bytes(small_mf_release(1, PUBLISHER[0], n=40))
    with _open(folder, key) as device:
        device.apply_release(source)
        source.write_bytes(b"rewritten")
        assert device.release is not None and len(device.recommend(3)) == 3
    with _open(folder, key) as device:
        assert device.release_error is None and device.release is not None


@pytest.mark.parametrize("size", [0, 10])
def test_a_truncated_installed_file_is_visible(tmp_path, size) -> None:
    folder, key, _ = _installed(tmp_path)
    path = folder / RELEASE_FILE
    path.write_bytes(path.read_bytes()[:size])
    with _open(folder, key) as device:
        assert isinstance(device.release_error, SignatureError)
        assert device.recommend(3) == []


def test_the_iALS_item_side_is_kept_for_the_installed_release_only(tmp_path) -> None:
    folder, key, _ = _installed(tmp_path)
    with _open(folder, key) as device:
        assert device._serving is not None
        digest = device._serving.digest
        stored = device._open_store().get_meta("serving_cache")
        device.apply_release(small_mf_release(2, PUBLISHER[0], n=40))
        assert device._open_store().get_meta("serving_cache") != stored
    from stamen.client.device.derived import read_derived

    assert set(read_derived(stored, digest, folder).arrays) == {"ials.gram", "ials.base"}
    assert read_derived(stored, b"\x00" * 32, folder).arrays == {}
    gram = read_derived(stored, digest, folder).arrays["ials.gram"]
    assert gram.shape == (4, 4) and np.allclose(gram, gram.T)
