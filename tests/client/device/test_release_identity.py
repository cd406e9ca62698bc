"""Releases have an identity (publisher app, catalogue, model kind) that a device pins;
"apply if newer"; applying never makes ``recommend`` wait for the build."""

from __future__ import annotations

import threading

import pytest
from helpers.devices import retrieval_device
from helpers.signed_releases import small_mf_release

import stamen.client.device.releases as releases_module
from stamen.client import ForeignReleaseError, ReleaseError, RollbackError
from stamen.errors import BundleError
from stamen.models.bundle import ReleaseBundle, ReleaseIdentity, latest_release
from stamen.privacy import generate_signing_key, open_signed

PUBLISHER = generate_signing_key()
MOVIES = ReleaseIdentity(app="acme", catalog="ml-100k")
MUSIC = ReleaseIdentity(app="acme", catalog="lastfm-2k")


def _release(number: int, identity: ReleaseIdentity | None = MOVIES) -> bytes:
    return small_mf_release(number, PUBLISHER[0], identity=identity)


@pytest.fixture
def device(tmp_path):
    with retrieval_device(tmp_path / "device", PUBLISHER[1]) as opened:
        yield opened


def test_the_identity_travels_in_the_signed_bundle() -> None:
    payload = open_signed(_release(3), public_key=PUBLISHER[1])
    assert ReleaseBundle.decode(payload).identity == MOVIES
    plain = open_signed(_release(3, identity=None), public_key=PUBLISHER[1])
    assert ReleaseBundle.decode(plain).identity is None
    with pytest.raises(BundleError, match="catalog must be"):
        ReleaseIdentity(app="acme", catalog=" ")


def test_a_release_of_another_catalogue_is_refused_unless_migrating(device) -> None:
    device.apply_release(_release(5))
    with pytest.raises(ForeignReleaseError, match="catalogue 'lastfm-2k', where this device"):
        device.apply_release(_release(9, identity=MUSIC))
    with pytest.raises(ForeignReleaseError, match="without identity"):
        device.apply_release(_release(9, identity=None))
    assert device.release.number == 5  # the installed release stays
    device.apply_release(_release(2, identity=MUSIC), migrate=True)  # its own numbering
    assert device.release.number == 2
    with pytest.raises(ForeignReleaseError):  # the pin moved with it
        device.apply_release(_release(6))
    with pytest.raises(RollbackError):
        device.apply_release(_release(1, identity=MUSIC))


def test_a_pin_from_a_release_without_identity_takes_the_first_named_one(device) -> None:
    device.apply_release(_release(1, identity=None))
    device.apply_release(_release(2))
    with pytest.raises(ForeignReleaseError):
        device.apply_release(_release(3, identity=MUSIC))


def test_apply_if_newer_is_a_no_op_on_an_older_or_equal_release(device, tmp_path) -> None:
    assert device.apply_if_newer(_release(4)).number == 4
    assert device.apply_if_newer(_release(4)) is None
    assert device.apply_if_newer(_release(3)) is None  # not a RollbackError: nothing to do
    folder = tmp_path / "releases"
    folder.mkdir()
    (folder / "release-000007.stamen").write_bytes(_release(7))
    with pytest.raises(ReleaseError, match="no 'latest' pointer"):
        device.apply_if_newer(folder)
    (folder / "latest").write_text("release-000007.stamen")
    assert device.apply_if_newer(folder).number == 7
    assert device.apply_if_newer(folder) is None
    with pytest.raises(ForeignReleaseError):  # what apply_release refuses stays refused
        device.apply_if_newer(_release(8, identity=MUSIC))


def test_a_pointer_out_of_its_folder_is_refused(tmp_path) -> None:
    (tmp_path / "latest").write_text("../elsewhere.stamen")
    with pytest.raises(BundleError, match="not a release file"):
        latest_release(tmp_path)


def test_recommend_goes_on_while_a_release_is_being_built(device, monkeypatch) -> None:
    device.apply_release(_release(1))
    device.record("item-1", "play")
    building, release_build = threading.Event(), threading.Event()
    real = releases_module.ServedRelease

    def slow_build(*args):
        building.set()
        assert release_build.wait(timeout=60)
        return real(*args)

    monkeypatch.setattr(releases_module, "ServedRelease", slow_build)
    applying = threading.Thread(target=device.apply_release, args=(_release(2),))
    applying.start()
    try:
        assert building.wait(timeout=60)
        picks = device.recommend(3)  # the build is held: this must not wait for it
        device.record("item-2", "play")
        assert len(picks) == 3 and device.release.number == 1
    finally:
        release_build.set()
        applying.join(timeout=60)
    assert not applying.is_alive() and device.release.number == 2
