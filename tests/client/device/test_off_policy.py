"""Off-policy evaluation on the device: the clip bounds a person's contribution by the
sensitivity, the sums are the clear IPS/SNIPS sums, and one device's vector is the batched
function's."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.client.device.events import Event
from stamen.client.device.impressions import Impression, engagement_rewards
from stamen.client.device.off_policy import (
    OffPolicyBounds,
    contributions,
    device_contribution,
    first_moments,
    summed_contributions,
)
from stamen.models.off_policy import dimension, moment_names, sensitivity, width


@st.composite
def _slots(draw: st.DrawFn) -> tuple[np.ndarray, ...]:
    people = draw(st.integers(1, 4))
    groups = draw(st.integers(1, 6))
    k = draw(st.integers(1, 3))
    probability = st.floats(1e-6, 1.0)
    shown = np.array(
        draw(st.lists(st.integers(0, 400), min_size=people * groups, max_size=people * groups)),
        np.float64,
    )
    share = np.array(draw(st.lists(st.floats(0, 1), min_size=shown.size, max_size=shown.size)))
    logged = draw(st.lists(probability, min_size=shown.size, max_size=shown.size))
    target = draw(st.lists(st.floats(0, 1), min_size=shown.size * k, max_size=shown.size * k))
    shape = (people, groups)
    return (
        np.floor(shown * share).reshape(shape),
        shown.reshape(shape),
        np.array(logged).reshape(shape),
        np.array(target).reshape((*shape, k)),
    )


@settings(max_examples=200, deadline=None)
@given(
    slots=_slots(),
    max_slots=st.integers(1, 300),
    max_weight=st.floats(1.0, 1e4),
)
def test_a_contribution_is_bounded_by_the_sensitivity(
    slots: tuple[np.ndarray, ...], max_slots: int, max_weight: float
) -> None:
    engaged, shown, logged, target = slots
    k = target.shape[2]
    bounds = OffPolicyBounds(max_slots=max_slots, max_weight=max_weight)
    z = first_moments(engaged, shown, logged, target, bounds=bounds)
    assert np.all((z >= 0) & (z <= 1))
    vectors = contributions(z)
    assert vectors.shape == (len(shown), width(k))
    assert np.all(np.linalg.norm(vectors, axis=1) <= sensitivity(k) + 1e-12)
    np.testing.assert_allclose(summed_contributions(z), vectors.sum(axis=0), atol=1e-9)


def test_the_bound_is_reached_by_a_full_person_at_the_clip() -> None:
    bounds = OffPolicyBounds(max_slots=5, max_weight=2.0)
    ones = np.ones((1, 5))
    z = first_moments(ones, ones, np.full((1, 5), 0.1), np.ones((1, 5, 2)), bounds=bounds)
    np.testing.assert_allclose(z, 1.0)
    assert (
        np.linalg.norm(contributions(z)) == pytest.approx(sensitivity(2)) == pytest.approx(27**0.5)
    )


def test_sums_give_the_clear_ips_snips_and_logging_values() -> None:
    rng = np.random.default_rng(3)
    people, groups, k = 50, 8, 2
    shown = rng.integers(0, 4, (people, groups)).astype(float)
    engaged = rng.binomial(shown.astype(int), 0.3).astype(float)
    logged = rng.uniform(0.2, 1.0, (people, groups))
    target = rng.uniform(0, 1, (people, groups, k))
    bounds = OffPolicyBounds(max_slots=32, max_weight=5.0)  # no clip binds: ≤ 24 slots, w ≤ 5
    total = summed_contributions(first_moments(engaged, shown, logged, target, bounds=bounds))
    w = target / logged[..., None]
    slots = shown.sum()
    assert total[1] / total[0] == pytest.approx(engaged.sum() / slots)
    for c in range(k):
        wr = (w[..., c] * engaged).sum()
        assert 5.0 * total[2 + 2 * c] / total[0] == pytest.approx(wr / slots)
        assert total[2 + 2 * c] / total[3 + 2 * c] == pytest.approx(wr / (w[..., c] * shown).sum())
    assert moment_names(2) == ("slots", "reward", "ips_0", "weight_0", "ips_1", "weight_1")


def test_clips_keep_a_heavy_persons_average_and_cap_the_weights() -> None:
    bounds = OffPolicyBounds(max_slots=10, max_weight=2.0)
    shown, engaged = np.array([[30.0]]), np.array([[15.0]])
    z = first_moments(engaged, shown, np.array([[0.1]]), np.array([[[0.9]]]), bounds=bounds)
    # 30 slots count as 10, half rewarded; the weight 9 is clipped to 2 (a·W·L = w·r·L/m)
    np.testing.assert_allclose(z[0], [1.0, 0.5, 0.5, 1.0])


def test_one_device_contributes_the_batched_vector_of_its_window() -> None:
    impressions = [
        Impression(request=r, position=j, item=f"i{r}{j}", propensity=0.5, source="x", at=100.0 * r)
        for r in range(4)
        for j in range(3)
    ]
    events = [Event(item="i01", kind="play", at=10.0), Event(item="i22", kind="click", at=260.0)]
    target = np.linspace(0.05, 0.6, 2 * len(impressions)).reshape(len(impressions), 2)
    bounds = OffPolicyBounds(max_slots=20, max_weight=4.0)
    vector = device_contribution(impressions, events, target, start=0, end=300, bounds=bounds)
    kept = impressions[:9]
    rewards = engagement_rewards(kept, events, window_s=bounds.attribution_s)
    assert rewards.sum() == 2
    z = first_moments(
        rewards[None], np.ones((1, 9)), np.full((1, 9), 0.5), target[None, :9], bounds=bounds
    )
    np.testing.assert_allclose(vector, contributions(z)[0])
    assert len(vector) == width(2) and dimension(2) == 6


def test_bad_input_is_named() -> None:
    ok = np.ones((2, 3))
    with pytest.raises(ValueError, match="logged propensities"):
        first_moments(ok, ok, np.zeros((2, 3)), np.ones((2, 3, 1)), bounds=OffPolicyBounds())
    with pytest.raises(ValueError, match="engaged"):
        first_moments(ok * 2, ok, ok, np.ones((2, 3, 1)), bounds=OffPolicyBounds())
    with pytest.raises(ValueError, match="target"):
        first_moments(ok, ok, ok, np.ones((2, 3)), bounds=OffPolicyBounds())
    with pytest.raises(ValueError, match="max_weight"):
        OffPolicyBounds(max_weight=0.5)
    with pytest.raises(ValueError, match="max_slots"):
        OffPolicyBounds(max_slots=0)
    with pytest.raises(ValueError, match="3 candidates"):
        OffPolicyBounds(max_weight=(2.0, 3.0)).weights(3)
    with pytest.raises(ValueError, match="target must have shape"):
        device_contribution([], [], np.ones((1, 2)), start=0, end=1)
