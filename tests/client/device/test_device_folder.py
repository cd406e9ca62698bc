"""A device's folder is its own: a marker, a lost store never silently replaced, damage
told from a wrong key, one opener at a time, owner-only exports."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.signed_releases import small_mf_release

from stamen.client import (
    Device,
    DeviceBusyError,
    DeviceClosedError,
    NotAStoreError,
    StamenError,
    StoreCorruptError,
    StoreLostError,
)
from stamen.client.device.folder import LOCK_FILE, MARKER_FILE
from stamen.client.device.releases import RELEASE_FILE
from stamen.client.device.store import DB_NAME
from stamen.client.pipeline.recommend import PipelineSettings
from stamen.privacy import DecryptionError, generate_key, generate_signing_key

PUBLISHER = generate_signing_key()
RETRIEVAL = PipelineSettings.retrieval_only()


def _release(number: int) -> bytes:
    return small_mf_release(number, PUBLISHER[0])


def _open(folder: Path, key: bytes) -> Device:
    return Device.open(folder, key=key, release_key=PUBLISHER[1], pipeline=RETRIEVAL)


def _device_with_events(folder: Path, key: bytes, events: int = 300) -> None:
    with _open(folder, key) as device:
        device.apply_release(_release(1))
        device.record_many([{"item": f"item-{i % 10}", "kind": "play"} for i in range(events)])


def test_a_new_device_claims_a_new_or_empty_folder_with_a_marker(tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (tmp_path / "new", empty):
        _open(folder, generate_key()).close()
        assert (folder / MARKER_FILE).is_file() and (folder / DB_NAME).is_file()
        assert stat.S_IMODE((folder / MARKER_FILE).stat().st_mode) == 0o600


def test_a_folder_holding_other_files_is_refused_and_left_untouched(tmp_path) -> None:
    folder = tmp_path / "appdata"
    folder.mkdir()
    (folder / "settings.json").write_text("{}")
    (folder / "photos").mkdir()
    with pytest.raises(NotAStoreError, match=r"not empty \(photos, settings.json\)"):
        _open(folder, generate_key())
    assert sorted(p.name for p in folder.iterdir()) == ["photos", "settings.json"]


@pytest.mark.parametrize("loss", ["deleted", "emptied"])
def test_a_lost_database_is_store_lost_and_nothing_is_created(tmp_path, loss) -> None:
    key, folder = generate_key(), tmp_path / "device"
    _device_with_events(folder, key)
    if loss == "deleted":
        (folder / DB_NAME).unlink()
    else:
        (folder / DB_NAME).write_bytes(b"")
    with pytest.raises(StoreLostError, match=r"start_over"):
        _open(folder, key)
    assert (folder / DB_NAME).exists() == (loss == "emptied")
    assert (folder / DB_NAME).exists() is False or (folder / DB_NAME).stat().st_size == 0
    with pytest.raises(StoreLostError):  # still lost: the failed open changed nothing
        _open(folder, key)


def test_start_over_after_a_lost_store_makes_a_new_device(tmp_path) -> None:
    key, folder = generate_key(), tmp_path / "device"
    _device_with_events(folder, key)
    (folder / DB_NAME).unlink()
    with Device.start_over(folder, key=key, release_key=PUBLISHER[1]) as device:
        assert len(device.history()) == 0
        assert device.release is None  # the old release file went with the old device
    with _open(folder, key) as device:  # and it opens as itself afterwards
        assert len(device.history()) == 0


def test_a_database_from_another_device_is_not_this_folders(tmp_path) -> None:
    key = generate_key()
    _device_with_events(tmp_path / "a", key)
    _device_with_events(tmp_path / "b", key, events=5)
    for name in (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"):
        (tmp_path / "a" / name).unlink(missing_ok=True)
    (tmp_path / "a" / DB_NAME).write_bytes((tmp_path / "b" / DB_NAME).read_bytes())
    with pytest.raises(StoreLostError, match="not the one created in this folder"):
        _open(tmp_path / "a", key)


@pytest.mark.parametrize("where", ["first page", "last page", "half the file"])
def test_damage_is_store_corrupt_naming_the_file_not_a_wrong_key(tmp_path, where) -> None:
    key, folder = generate_key(), tmp_path / "device"
    _device_with_events(folder, key, events=3000)
    path = folder / DB_NAME
    raw = bytearray(path.read_bytes())
    if where == "half the file":
        raw = raw[: len(raw) // 2]
    else:
        at = 100 if where == "first page" else len(raw) - 2000
        raw[at] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreCorruptError) as caught:
        _open(folder, key)
    assert caught.value.path == str(path) and str(path) in str(caught.value)
    with pytest.raises(DecryptionError, match="wrong key"):  # a wrong key stays a wrong key
        _open(folder, generate_key())


def test_one_device_at_a_time_in_this_process(tmp_path) -> None:
    key, folder = generate_key(), tmp_path / "device"
    first = _open(folder, key)
    with pytest.raises(DeviceBusyError, match="open elsewhere"):
        _open(folder, key)
    first.record("item-1", "play")  # the refused open did not disturb the holder
    first.close()
    with _open(folder, key) as second:  # closing let go of the folder
        assert len(second.history()) == 1


def test_a_second_process_is_refused_while_the_first_holds_the_store(tmp_path) -> None:
    key, folder = generate_key(), tmp_path / "device"
    program = (
        "import sys\n"
        "from stamen.client import Device, DeviceBusyError\n"
        "try:\n"
        f"    Device.open({str(folder)!r}, key=bytes.fromhex({key.hex()!r}))\n"
        "except DeviceBusyError as error:\n"
        "    print('busy:', error); sys.exit(3)\n"
        "print('opened')\n"
    )
    with _open(folder, key):
        held = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert held.returncode == 3, held.stderr
    assert "open elsewhere" in held.stdout
    free = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert free.returncode == 0 and "opened" in free.stdout, free.stderr


def test_forget_lets_go_and_leaves_no_stamen_file(tmp_path) -> None:
    key, folder = generate_key(), tmp_path / "device"
    device = _open(folder, key)
    device.apply_release(_release(1))
    device.forget()
    assert list(folder.iterdir()) == []
    with pytest.raises(DeviceClosedError):
        device.record("item-1", "play")
    with _open(folder, key) as again:  # an empty folder: a new device may claim it
        assert len(again.history()) == 0 and (folder / LOCK_FILE).exists()


def test_a_damaged_installed_release_is_visible_and_repaired_by_applying_again(
    tmp_path,
) -> None:
    key, folder = generate_key(), tmp_path / "device"
    release = _release(1)
    _device_with_events(folder, key)
    raw = bytearray((folder / RELEASE_FILE).read_bytes())
    raw[-10] ^= 0x01
    (folder / RELEASE_FILE).write_bytes(bytes(raw))
    with _open(folder, key) as device:
        assert isinstance(device.release_error, StamenError)
        assert device.release is None and device.recommend(3) == []
        device.apply_release(release)  # the same release, re-applied: repaired
        assert device.release_error is None and len(device.recommend(3)) == 3
    with _open(folder, key) as device:
        assert device.release_error is None and device.release is not None


def test_an_installed_release_this_installation_cannot_serve_leaves_the_device_usable(
    tmp_path, monkeypatch
) -> None:
    # e.g. a two-tower release installed, then torch uninstalled: opening must not fail
    from stamen.client.device import releases as releases_module
    from stamen.errors import ConfigError

    key, folder = generate_key(), tmp_path / "device"
    _device_with_events(folder, key)

    def unservable(*args, **kwargs):
        raise ConfigError("model 'mf' needs torch, which is not installed here")

    monkeypatch.setattr(releases_module, "ServedRelease", unservable)
    with _open(folder, key) as device:
        assert isinstance(device.release_error, ConfigError)
        assert "needs torch" in str(device.release_error)
        assert device.release is None and device.recommend(3) == []
        assert len(device.history()) > 0  # the person's events are all there
    monkeypatch.undo()
    with _open(folder, key) as device:  # served again where it can be
        assert device.release_error is None and len(device.recommend(3)) == 3


def test_opening_removes_what_an_interrupted_apply_left(tmp_path) -> None:
    key, folder = generate_key(), tmp_path / "device"
    _device_with_events(folder, key)
    left = [folder / f".{RELEASE_FILE}.0123456789abcdef.tmp", folder / f".{RELEASE_FILE}.x.tmp"]
    for path in left:
        path.write_bytes(b"half a release")
    other = folder / "settings.json"  # the app's own file stays
    other.write_text("{}")
    with _open(folder, key) as device:
        assert not any(path.exists() for path in left) and other.exists()
        assert device.release is not None and len(device.recommend(3)) == 3
        device.apply_release(_release(2))  # the replaced release's link is removed too
        assert not list(folder.glob(f".{RELEASE_FILE}.*"))


def test_an_export_file_is_owner_only(tmp_path) -> None:
    with _open(tmp_path / "device", generate_key()) as device:
        device.record("item-1", "play")
        device.export(tmp_path / "export.json")
    assert stat.S_IMODE(os.stat(tmp_path / "export.json").st_mode) == 0o600
