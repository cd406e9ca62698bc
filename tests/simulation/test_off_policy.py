"""Off-policy evaluation in simulation: the draw and its propensities are the simulator's,
the true value is what the policy earns when it runs, and the server's intervals cover the
truth at their level."""

from __future__ import annotations

import numpy as np
import pytest

from stamen.client.device.off_policy import OffPolicyBounds, first_moments, summed_contributions
from stamen.models.off_policy import sensitivity
from stamen.privacy.dp.user import UserDP
from stamen.server.off_policy_stats import moments, off_policy_estimates
from stamen.simulation.experiments.off_policy import (
    Policy,
    explore,
    logged_sums,
    policy_lists,
    release,
    slot_probability,
    true_value,
)
from stamen.simulation.experiments.response import (
    ResponseModel,
    synthetic_population,
    variant_lists,
)

MODEL = ResponseModel()


@pytest.fixture(scope="module")
def population():  # type: ignore[no-untyped-def]
    return synthetic_population(2000, n_items=500, seed=9)


def test_the_draw_is_the_simulators_and_its_propensities_are_exact(population) -> None:  # type: ignore[no-untyped-def]
    policy = Policy("taste", 0.3)
    lists = policy_lists(population, policy)
    drawn = explore(lists, np.random.default_rng([4, 28, int(0.3 * 1e6)]))
    np.testing.assert_array_equal(
        drawn, variant_lists(population, {"explore": 0.3}, base="taste", seed=4)
    )
    # How often the base item stays, over 100 draws of 2000 × 10 slots, against its exact
    # probability: the pooled frequency's standard error is at most 0.5 / sqrt(2e6) = 0.00035.
    rng = np.random.default_rng(1)
    stays = np.mean([np.mean(explore(lists, rng) == lists.base) for _ in range(100)])
    exact = np.mean(slot_probability(lists, lists.base))
    assert abs(stays - exact) < 4 * 0.00035
    other = np.where(lists.base == 0, 1, 0)  # an item other than the base one
    assert np.all(slot_probability(lists, other) == pytest.approx(0.3 / 500))


def test_the_true_value_is_what_the_policy_earns_on_policy(population) -> None:  # type: ignore[no-untyped-def]
    # The policy runs itself (its own log); with 20 slots per person the slot clip binds for
    # a third of the people, so the clip's weighting is part of what is checked.
    bounds = OffPolicyBounds(max_slots=20, max_weight=1.0)
    lists = policy_lists(population, Policy("taste", 0.3))
    sums = logged_sums(
        population, lists, [lists], model=MODEL, bounds=bounds, repetitions=150, seed=2
    )
    rewards, slots = sums[:, 1], sums[:, 0]
    pooled = rewards.sum() / slots.sum()
    # The pooled ratio's standard error over the independent repetitions (delta method).
    stderr = np.std(rewards - pooled * slots, ddof=1) / np.sqrt(len(sums)) / slots.mean()
    truth = true_value(population, lists, MODEL, bounds)
    assert abs(pooled - truth) < 4 * stderr, (pooled, truth, stderr)
    # On-policy, every importance weight is 1: IPS and SNIPS are the logged value.
    est = off_policy_estimates(sums, candidates=1, max_weights=[1.0], noise_std=0.0)
    np.testing.assert_allclose(est["ips"][:, 0], est["logging"])
    np.testing.assert_allclose(est["snips"][:, 0], 1.0 * est["logging"])


def test_intervals_cover_the_true_values_and_effects(population) -> None:  # type: ignore[no-untyped-def]
    candidates = [Policy("popular", 0.3), Policy("popular", 0.0)]
    bounds = OffPolicyBounds(max_slots=50, max_weight=(3.0, 1.2))  # the largest weights
    logging = policy_lists(population, Policy("popular", 0.1))
    lists = [policy_lists(population, c) for c in candidates]
    truth = np.array([true_value(population, x, MODEL, bounds) for x in [logging, *lists]])
    clear = logged_sums(
        population, logging, lists, model=MODEL, bounds=bounds, repetitions=200, seed=5
    )
    for privacy in (UserDP(), UserDP(mode="distributed", target_epsilon=4.0, delta=1 / 2000)):
        released = release(clear, privacy=privacy, population=2000, candidates=2, seed=6)
        if privacy.enabled:
            assert released.privacy["clip_norm"] == pytest.approx(sensitivity(2))
            assert released.sums[:, 0].std() > 0.5 * released.noise_std > 0
        est = off_policy_estimates(
            released.sums, candidates=2, max_weights=[3.0, 1.2], noise_std=released.noise_std
        )
        for kind in ("ips", "snips"):
            effect = truth[1:] - truth[0]
            lower, upper = est[f"{kind}_effect_lower"], est[f"{kind}_effect_upper"]
            covered = np.mean((lower <= effect) & (effect <= upper), axis=0)
            # Binomial(200, 0.95) / 200: sd 0.0154; [0.90, 0.99] is below −3.2 sd and above
            # +2.6 sd (P(X ≥ 199) = 0.0004); seeded, so deterministic.
            assert np.all((covered >= 0.90) & (covered <= 0.99)), (privacy.mode, kind, covered)
            lower, upper = est[f"{kind}_lower"], est[f"{kind}_upper"]
            covered = np.mean((lower <= truth[1:]) & (truth[1:] <= upper), axis=0)
            # The value's variance includes the spread between people, who are the same in
            # every repetition: its intervals may over-cover, never under-cover.
            assert np.all(covered >= 0.90), (privacy.mode, kind, covered)
        if not privacy.enabled:  # noise off: the release is the clear sums
            np.testing.assert_array_equal(released.sums, clear)


def test_the_server_reads_the_devices_layout() -> None:
    rng = np.random.default_rng(0)
    shown = rng.integers(0, 5, (30, 4)).astype(float)
    z = first_moments(
        rng.binomial(shown.astype(int), 0.4),
        shown,
        rng.uniform(0.1, 1, (30, 4)),
        rng.uniform(0, 1, (30, 4, 3)),
        bounds=OffPolicyBounds(),
    )
    total, second = moments(summed_contributions(z), 3)
    np.testing.assert_allclose(total, z.sum(axis=0))
    np.testing.assert_allclose(second, z.T @ z)


def test_bad_policies_are_named() -> None:
    with pytest.raises(ValueError, match="explore"):
        Policy("popular", 1.5)
    with pytest.raises(ValueError, match="base"):
        Policy("newest", 0.1)  # type: ignore[arg-type]
