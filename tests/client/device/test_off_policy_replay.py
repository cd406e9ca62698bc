"""A release's candidate policies on a device: each candidate's probability of a logged slot
by replaying the logged request under its settings, and what the device contributes to
their off-policy evaluation (the layout and clipping: ``test_off_policy.py``)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.signed_releases import small_mf_release

from stamen.client import Device
from stamen.client.device.experiments import candidate_list
from stamen.client.device.off_policy import OffPolicyBounds, device_contribution
from stamen.client.pipeline.recommend import PipelineSettings
from stamen.errors import BundleError, ConfigError
from stamen.models.off_policy import width
from stamen.privacy import generate_key, generate_signing_key

SHOWN_AT = 1_700_000_000.0
LOGGING = {"explore": 0.3}
CANDIDATES = [
    {"name": "same", "overrides": LOGGING, "max_weight": 5.0},
    {"name": "greedy", "overrides": {"explore": 0.0}, "max_weight": 2.0},
]


def _logged_device(tmp_path, extras: dict) -> Device:  # noqa: ANN001
    """A device with a history, serving with exploration 0.3, that showed five lists of 6
    (each logged) an hour apart and engaged with the first item of each."""
    private, public = generate_signing_key()
    device = Device.open(
        tmp_path / "device",
        key=generate_key(),
        release_key=public,
        seed=3,
        pipeline=PipelineSettings(**LOGGING),
    )
    device.apply_release(small_mf_release(1, private, n=40, extras=extras))
    for i, item in enumerate(("item-1", "item-5", "item-9")):
        device.record(item, "view", at=SHOWN_AT - 86_400.0 + i)
    for k in range(5):
        at = SHOWN_AT + 3600.0 * k
        shown = device.recommend(6, at=at)
        device.log_shown(shown, at=at)
        device.record(shown[0].item, "view", at=at + 60.0)
    return device


def test_a_candidate_with_the_logging_settings_replays_the_logged_propensities(
    tmp_path,
) -> None:
    """Replayed under the settings that logged it, with the history as of each request,
    every slot up to the first explored one has the candidate probability the log
    recorded (the same greedy list, the same eligible items); a candidate that never
    explores gives 1 to a greedy slot and 0 to an explored one."""
    device = _logged_device(tmp_path, {"candidate_policies": CANDIDATES})
    with device:
        shown = device.impressions()
        candidates = device.candidate_policies()
        assert [c.name for c in candidates] == ["same", "greedy"]
        target = device._candidate_probabilities(candidates, shown)
    assert target.shape == (30, 2)
    compared = 0
    for request in {i.request for i in shown}:
        rows = sorted(
            (k for k, i in enumerate(shown) if i.request == request),
            key=lambda k: shown[k].position,
        )
        for k in rows:
            np.testing.assert_allclose(target[k, 0], shown[k].propensity, rtol=1e-12)
            explored = shown[k].source == "explore"
            assert target[k, 1] == (0.0 if explored else 1.0)
            compared += 1
            if explored:
                break  # the log's later slots follow an explored prefix the replay has not
    assert compared >= 5


def test_the_contribution_uses_the_replayed_probabilities_and_the_servers_clips(
    tmp_path,
) -> None:
    device = _logged_device(tmp_path, {"candidate_policies": CANDIDATES})
    window = {"start": SHOWN_AT - 1.0, "end": SHOWN_AT + 86_400.0}
    with device:
        got = device.off_policy_contribution(
            ["greedy", "same"],
            max_weights=[2.0, 5.0],
            max_slots=20,
            attribution_s=3600.0,
            **window,
        )
        shown = device.impressions()
        candidates = {c.name: c for c in device.candidate_policies()}
        target = device._candidate_probabilities([candidates["greedy"], candidates["same"]], shown)
        events = list(device._open_store().events())
        missing = device.off_policy_contribution(
            ["greedy", "unknown"],
            max_weights=[2.0, 2.0],
            max_slots=20,
            attribution_s=3600.0,
            **window,
        )
        with pytest.raises(ValueError, match="1 weight clips for 2 candidates"):
            device.off_policy_contribution(
                ["greedy", "same"],
                max_weights=[2.0],
                max_slots=20,
                attribution_s=3600.0,
                **window,
            )
    bounds = OffPolicyBounds(max_slots=20, max_weight=(2.0, 5.0), attribution_s=3600.0)
    want = device_contribution(shown, events, target, bounds=bounds, **window)
    assert got is not None and got.shape == (width(2),)
    np.testing.assert_array_equal(got, want)
    # 30 slots count as 20, their 5 rewards scaled by the same 20 / 30
    assert got[0] == 1.0 and got[1] == pytest.approx(5 * (20 / 30) / 20)
    assert missing is None  # the release does not carry every candidate asked for


def test_bad_candidate_policies_are_named() -> None:
    with pytest.raises(ConfigError) as error:
        candidate_list(
            [
                {"name": "a", "overrides": {"explore": 2.0}},
                {"name": "b", "max_weight": 0.5},
                {"name": "a"},
            ]
        )
    message = str(error.value)
    assert "0: overrides" in message and "explore" in message
    assert "1: max_weight" in message and "repeat" in message


def test_a_release_with_a_bad_candidate_is_refused_and_the_installed_one_stays(tmp_path) -> None:
    private, public = generate_signing_key()
    with Device.open(tmp_path / "device", key=generate_key(), release_key=public) as device:
        device.apply_release(
            small_mf_release(1, private, extras={"candidate_policies": CANDIDATES})
        )
        bad = [{**CANDIDATES[0], "overrides": {"explore": 3.0}}]
        with pytest.raises(BundleError, match=r"release 2: extras\.candidate_policies: .*explore"):
            device.apply_release(small_mf_release(2, private, extras={"candidate_policies": bad}))
        assert device.release is not None and device.release.number == 1
        assert [c.name for c in device.candidate_policies()] == ["same", "greedy"]
