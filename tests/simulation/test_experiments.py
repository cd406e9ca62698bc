"""The batched experiment runner against the response simulator's truth: A/A tests reject at
about α, A/B intervals cover the true effect, the noise is the mechanism's, and the device's
HMAC units drive the same arms."""

from __future__ import annotations

import numpy as np
import pytest

from stamen.client.device.experiments import Experiment, assign
from stamen.errors import ConfigError
from stamen.models.experiments import METRICS, STATISTICS, MetricBounds, sensitivity
from stamen.privacy.dp.user import UserDP
from stamen.simulation.experiments.batched import clear_sums, estimates, hmac_units, release
from stamen.simulation.experiments.response import (
    ResponseModel,
    population_from_interactions,
    synthetic_population,
    true_means,
    variant_lists,
    variant_response,
)

MODEL, BOUNDS = ResponseModel(), MetricBounds()
AA = Experiment(id="aa", salt="0", arms=[{"name": "A"}, {"name": "A2"}])
AB = Experiment(
    id="ab", salt="0", arms=[{"name": "A"}, {"name": "B", "overrides": {"explore": 0.2}}]
)
ENGAGEMENT = METRICS.index("engagement")


@pytest.fixture(scope="module")
def population():  # type: ignore[no-untyped-def]
    return synthetic_population(3000, n_items=500, seed=5)


@pytest.fixture(scope="module")
def responses(population):  # type: ignore[no-untyped-def]
    return [
        variant_response(population, variant_lists(population, arm.overrides, base="taste"), MODEL)
        for arm in AB.arms
    ]


def test_aa_tests_reject_at_about_alpha(population, responses) -> None:  # type: ignore[no-untyped-def]
    clear = clear_sums(
        population, [responses[0]] * 2, AA, repetitions=400, seed=1, model=MODEL, bounds=BOUNDS
    )
    for privacy in (UserDP(), UserDP(mode="central", target_epsilon=1.0)):
        released = release(clear, privacy=privacy, population=population.size, seed=2)
        rejected = (estimates(released, bounds=BOUNDS)["p_value"][:, 1] < 0.05).mean(axis=0)
        # 400 experiments of a test at α = 0.05: the count of rejections is Binomial(400, 0.05)
        # (mean 20, sd 4.4); [0.02, 0.09] is [8, 36], beyond 2.7 sd on either side, for every
        # metric (each seeded: the check is deterministic)
        assert np.all((rejected >= 0.02) & (rejected <= 0.09)), (privacy.mode, rejected)


def test_ab_intervals_cover_the_true_effect(population, responses) -> None:  # type: ignore[no-untyped-def]
    truth = true_means(population, responses, MODEL, BOUNDS)
    effect = truth[1] - truth[0]
    assert effect[ENGAGEMENT] < 0  # exploration shows fewer of the person's future items
    clear = clear_sums(
        population, responses, AB, repetitions=300, seed=3, model=MODEL, bounds=BOUNDS
    )
    for privacy in (UserDP(), UserDP(mode="distributed", target_epsilon=4.0)):
        est = estimates(
            release(clear, privacy=privacy, population=population.size, seed=4), bounds=BOUNDS
        )
        lower, upper = est["lower"][:, 1, ENGAGEMENT], est["upper"][:, 1, ENGAGEMENT]
        covered = np.mean((lower <= effect[ENGAGEMENT]) & (effect[ENGAGEMENT] <= upper))
        # Binomial(300, 0.95)/300 has sd 0.0126: [0.90, 0.99] is −4 to +3.2 sd
        assert 0.90 <= covered <= 0.99, (privacy.mode, covered)
        bias = est["effect"][:, 1, ENGAGEMENT].mean() - effect[ENGAGEMENT]
        assert abs(bias) < 4 * est["stderr"][:, 1, ENGAGEMENT].mean() / np.sqrt(300)


@pytest.mark.parametrize("mode", ["central", "distributed"])
def test_release_adds_the_mechanisms_noise_and_charges_one_release(mode: str) -> None:
    clear = np.zeros((2000, 2, len(STATISTICS)))
    released = release(
        clear,
        privacy=UserDP(mode=mode, target_epsilon=2.0),
        population=10_000,
        seed=0,  # type: ignore[arg-type]
    )
    assert released.privacy["mode"] == mode
    assert released.privacy["rounds"] == 1
    assert 1.9 < released.privacy["epsilon"] <= 2.0
    assert released.privacy["clip_norm"] == pytest.approx(sensitivity())
    assert released.sums.std() == pytest.approx(released.noise_std, rel=0.02)
    assert release(clear, privacy=UserDP(), population=10_000, seed=0).noise_std == 0.0


def test_hmac_units_assign_the_devices_own_arms(population, responses) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(11)
    secrets = [rng.bytes(32) for _ in range(population.size)]
    units = hmac_units(AB, secrets)
    arms = np.array([assign(AB, device_secret=s) for s in secrets])
    np.testing.assert_array_equal(AB.arm_of(units), arms)
    clear = clear_sums(
        population, responses, AB, repetitions=1, seed=0, model=MODEL, bounds=BOUNDS, units=units
    )
    assert clear[0, :, 0].sum() <= population.size
    assert clear[0, 1, 0] <= np.sum(arms == 1)


def test_the_simulator_models_only_exploration(population) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="mmr_lambda"):
        variant_lists(population, {"mmr_lambda": 0.5})


def test_lists_hold_unseen_items_and_future_items_raise_engagement(population) -> None:  # type: ignore[no-untyped-def]
    lists = variant_lists(population, {}, base="taste")
    assert not population.contains("seen", lists).any()
    assert all(len(set(row)) == len(row) for row in lists[:200].tolist())
    response = variant_response(population, lists, MODEL)
    hit = population.contains("future", lists)
    assert np.all(response.slot_p[hit] > MODEL.base)
    assert np.all(response.slot_p[~hit] == MODEL.base)


def test_a_population_from_an_interaction_log_holds_out_each_users_latest() -> None:
    user = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    item = np.array([1, 2, 3, 4, 5, 5, 6, 7, 8, 9])
    time = np.array([1, 2, 3, 4, 5, 50, 40, 30, 20, 10])
    population = population_from_interactions(user, item, time, n_items=10)
    future = [
        population.future_items[population.future_indptr[u] : population.future_indptr[u + 1]]
        for u in (0, 1)
    ]
    assert [f.tolist() for f in future] == [[5], [5]]
    bigger = population_from_interactions(user, item, time, n_items=10, size=50, seed=1)
    assert bigger.size == 50 and len(bigger.seen_items) == 4 * 50
