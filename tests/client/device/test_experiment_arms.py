"""A release's A/B experiments on a device: the device's own secret, the arm it serves
(its overrides in what ``recommend`` does), a bad experiment refused with the release, and
what it contributes to a measurement."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.signed_releases import small_mf_release

from stamen.client import Device
from stamen.client.device.experiments import Experiment, assign
from stamen.errors import BundleError
from stamen.models.experiments import STATISTICS
from stamen.privacy import generate_key, generate_signing_key

SHOWN_AT = 1_700_000_000.0


def _experiment(explored_weight: float = 1.0, control_weight: float = 1e-12) -> dict:
    """An experiment whose ``explore-all`` arm (every slot explored) takes all but a
    vanishing share of devices unless the weights say otherwise."""
    return {
        "id": "exp-1",
        "salt": "salt-1",
        "arms": [
            {"name": "control", "weight": control_weight},
            {"name": "explore-all", "weight": explored_weight, "overrides": {"explore": 1.0}},
        ],
    }


def _device(tmp_path, extras: dict, *, number: int = 1):  # noqa: ANN202
    private, public = generate_signing_key()
    key = generate_key()
    device = Device.open(tmp_path / "device", key=key, release_key=public, seed=0)
    device.apply_release(small_mf_release(number, private, extras=extras))
    return device, key, public, private


def test_the_device_serves_its_arm_and_keeps_its_assignment(tmp_path) -> None:
    device, key, _, _ = _device(tmp_path, {"experiments": [_experiment()]})
    with device:
        assert [e.id for e in device.experiments()] == ["exp-1"]
        assert device.experiment_arms() == {"exp-1": "explore-all"}
        picks = device.recommend(5, at=SHOWN_AT)
        assert len(picks) == 5 and {p.source for p in picks} == {"explore"}
        secret = device._experiment_secret()
        exported = json.dumps(device.export(), default=str)
    assert len(secret) == 32 and secret.hex() not in exported  # never exported
    with Device.open(tmp_path / "device", key=key) as reopened:  # the secret is stored
        assert reopened._experiment_secret() == secret
        assert reopened.experiment_arms() == {"exp-1": "explore-all"}


def test_the_control_arm_serves_the_apps_own_settings(tmp_path) -> None:
    experiment = _experiment(explored_weight=1e-12, control_weight=1.0)
    device, *_ = _device(tmp_path, {"experiments": [experiment]})
    with device:
        assert device.experiment_arms() == {"exp-1": "control"}
        picks = device.recommend(5, at=SHOWN_AT)
        assert "explore" not in {p.source for p in picks}


def test_a_release_with_a_bad_experiment_is_refused_and_the_installed_one_stays(
    tmp_path,
) -> None:
    device, _, _, private = _device(tmp_path, {})
    bad = _experiment()
    bad["arms"][1]["overrides"] = {"explore": 3.0}
    with device:
        with pytest.raises(BundleError, match=r"extras\.experiments\.0.*explore"):
            device.apply_release(small_mf_release(2, private, extras={"experiments": [bad]}))
        assert device.release is not None and device.release.number == 1


def test_repeated_ids_are_refused(tmp_path) -> None:
    device, _, _, private = _device(tmp_path, {})
    twice = {"experiments": [_experiment(), _experiment()]}
    with device, pytest.raises(BundleError, match="repeats"):
        device.apply_release(small_mf_release(2, private, extras=twice))


def test_a_contribution_is_the_own_arms_block_of_what_was_shown_and_done(tmp_path) -> None:
    device, *_ = _device(tmp_path, {"experiments": [_experiment()]})
    with device:
        shown = device.recommend(4, at=SHOWN_AT)
        device.log_shown(shown, at=SHOWN_AT)
        device.record(shown[0].item, "view", at=SHOWN_AT + 60)
        device.record(shown[1].item, "not_interested", at=SHOWN_AT + 90)
        vector = device.experiment_contribution("exp-1", start=SHOWN_AT - 1, end=SHOWN_AT + 3600)
        assert device.experiment_contribution("other", start=0.0, end=1.0) is None
        with pytest.raises(ValueError, match="window"):
            device.experiment_contribution("exp-1", start=5.0, end=5.0)
        arm = assign(Experiment.from_json(_experiment()), device_secret=device._experiment_secret())
    width = len(STATISTICS)
    assert vector is not None and vector.shape == (2 * width,)
    own = vector[arm * width : (arm + 1) * width]
    assert not vector[(1 - arm) * width : (2 - arm) * width].any()
    # exposed; 1 session of 20; 1 engagement of 4 impressions; 1 positive per session
    # of at most 5; 1 not-interested of 4 impressions: each value over its bound
    values = np.array([1 / 20, 1 / 4, 1 / 5, 1 / 4])
    np.testing.assert_allclose(own, [1.0, *np.ravel(np.column_stack([values, values**2]))])


@pytest.mark.parametrize(("threshold", "engaged"), [(3.0, 0.0), (None, 0.25)])
def test_a_contribution_reads_ratings_by_the_devices_own_threshold(
    tmp_path, threshold, engaged
) -> None:
    private, public = generate_signing_key()
    release = small_mf_release(1, private, extras={"experiments": [_experiment()]})
    folder = tmp_path / "device"
    with Device.open(
        folder, key=generate_key(), release_key=public, rating_threshold=threshold
    ) as device:
        device.apply_release(release)
        shown = device.recommend(4, at=SHOWN_AT)
        device.log_shown(shown, at=SHOWN_AT)
        device.record(shown[0].item, "rating", value=1, at=SHOWN_AT + 60)  # one star
        vector = device.experiment_contribution("exp-1", start=SHOWN_AT - 1, end=SHOWN_AT + 3600)
        arm = device.experiment_arms()["exp-1"] == "explore-all"
    assert vector is not None
    # engagement per impression: a 1-star rating is a like only without a threshold
    assert vector[int(arm) * len(STATISTICS) + 3] == engaged


def test_a_contribution_with_a_pre_period_carries_its_covariates(tmp_path) -> None:
    from stamen.models.experiments import COVARIATE_STATISTICS

    device, *_ = _device(tmp_path, {"experiments": [_experiment()]})
    with device:
        before = device.recommend(4, at=SHOWN_AT - 7200)  # the pre-period: one engagement
        device.log_shown(before, at=SHOWN_AT - 7200)
        device.record(before[0].item, "view", at=SHOWN_AT - 7140)
        shown = device.recommend(4, at=SHOWN_AT)
        device.log_shown(shown, at=SHOWN_AT)
        window = {"start": SHOWN_AT - 1, "end": SHOWN_AT + 3600}
        vector = device.experiment_contribution("exp-1", pre_start=SHOWN_AT - 10_000, **window)
        plain = device.experiment_contribution("exp-1", **window)
        with pytest.raises(ValueError, match="pre_start must come before start"):
            device.experiment_contribution("exp-1", pre_start=SHOWN_AT, **window)
        arm = assign(Experiment.from_json(_experiment()), device_secret=device._experiment_secret())
    width = len(COVARIATE_STATISTICS)
    assert vector is not None and plain is not None and vector.shape == (2 * width,)
    own = vector[arm * width : (arm + 1) * width]
    # the window: 1 session, nothing engaged; the pre-period: 1 session, 1 of 4 engaged
    y, x = np.array([1 / 20, 0, 0, 0]), np.array([1 / 20, 1 / 4, 1 / 5, 0])
    np.testing.assert_allclose(own, [1.0, *np.ravel(np.column_stack([y, y**2, x, x**2, x * y]))])
    assert plain[arm * len(STATISTICS)] == 1.0
