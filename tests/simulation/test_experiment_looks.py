"""Experiments measured at several looks: windows add up, each look is a fresh release
composed by the accountant, and monitoring every look keeps the A/A false-positive rate."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from stamen.client.device.experiments import Experiment
from stamen.models.experiments import COVARIATE_STATISTICS, METRICS, MetricBounds
from stamen.privacy.dp.user import UserDP
from stamen.server.experiment_monitoring import (
    first_crossing,
    group_sequential_bounds,
    look_correlation,
)
from stamen.server.experiment_stats import outcome_sums
from stamen.simulation.experiments.batched import clear_look_sums, look_statistics, release
from stamen.simulation.experiments.response import (
    ResponseModel,
    cumulative_counts,
    simulate_windows,
    synthetic_population,
    variant_lists,
    variant_response,
)

MODEL, BOUNDS = ResponseModel(), MetricBounds()
AA = Experiment(id="aa", salt="0", arms=[{"name": "A"}, {"name": "A2"}])


@pytest.fixture(scope="module")
def setup():  # type: ignore[no-untyped-def]
    population = synthetic_population(2000, n_items=400, seed=3)
    control = variant_response(population, variant_lists(population, {}, base="taste"), MODEL)
    return population, control


def test_looks_add_up_the_windows(setup) -> None:  # type: ignore[no-untyped-def]
    population, control = setup
    arms = np.zeros(population.size, np.int64)
    windows = simulate_windows(
        population, [control], arms, MODEL, np.random.default_rng(0), windows=3
    )
    looks = cumulative_counts(windows)
    assert np.array_equal(looks[2].sessions, sum(w.sessions for w in windows))
    assert np.array_equal(looks[0].engaged, windows[0].engaged)
    assert not np.array_equal(windows[0].sessions, windows[1].sessions)  # fresh draws
    with pytest.raises(ValueError, match="windows"):
        simulate_windows(population, [control], arms, MODEL, np.random.default_rng(0), windows=0)


def test_each_look_is_a_fresh_release_composed_by_the_accountant(setup) -> None:  # type: ignore[no-untyped-def]
    population, control = setup
    clear = clear_look_sums(
        population, [control] * 2, AA, looks=4, repetitions=3, seed=1, model=MODEL, bounds=BOUNDS
    )
    privacy = UserDP(mode="central", target_epsilon=4.0, delta=1 / population.size)
    once = release(clear[:, -1], privacy=privacy, population=population.size, seed=0)
    looks = release(clear, privacy=privacy, population=population.size, seed=0, looks=True)
    assert looks.noise_std > once.noise_std  # the same ε spread over four releases
    assert looks.privacy["epsilon"] == pytest.approx(4.0, rel=0.05)
    noise = looks.sums - clear
    assert not np.allclose(noise[:, 0], noise[:, 1])
    assert np.std(noise) == pytest.approx(looks.noise_std, rel=0.2)
    assert np.array_equal(np.diff(clear[..., 0], axis=1) >= 0, np.ones((3, 3, 2), bool))


def test_monitoring_every_look_keeps_the_aa_false_positive_rate(setup) -> None:  # type: ignore[no-untyped-def]
    population, control = setup
    repetitions, looks = 400, 3
    clear = clear_look_sums(
        population,
        [control] * 2,
        AA,
        looks=looks,
        repetitions=repetitions,
        seed=2,
        model=MODEL,
        bounds=BOUNDS,
        covariates=True,
    )
    assert clear.shape == (repetitions, looks, 2, len(COVARIATE_STATISTICS))
    privacy = UserDP(mode="central", target_epsilon=4.0, delta=1 / population.size)
    # a valid rule rejects Binomial(400, 0.05) times: outside these with probability 2e-4
    low, high = stats.binom.ppf([1e-4, 1 - 1e-4], repetitions, 0.05) / repetitions
    for covariates, sums in ((False, outcome_sums(clear)), (True, clear)):
        released = release(
            sums,
            privacy=privacy,
            population=population.size,
            seed=5,
            looks=True,
            covariates=covariates,
        )
        looks_ = look_statistics(released, bounds=BOUNDS, covariates=covariates)
        for metric in ("engagement", "positive_rate"):
            m = METRICS.index(metric)
            v = looks_["variance"][:, :, m].mean(0)
            n = np.clip(looks_["noise"][:, :, m].mean(0), 0, None)
            bounds = group_sequential_bounds(
                np.arange(1, looks + 1) / looks, correlation=look_correlation(v, n)
            )
            rate = (first_crossing(looks_["z"][:, :, m], bounds) >= 0).mean()
            assert low <= rate <= high, (covariates, metric, rate)
