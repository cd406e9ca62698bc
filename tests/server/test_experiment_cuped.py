"""CUPED: the covariate layout's sensitivity, the estimate against the clear computation,
and the default layout left as it was."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.client.device.experiments import (
    PersonCounts,
    contributions,
    metric_values,
    summed_contributions,
)
from stamen.models.experiments import (
    COVARIATE_STATISTICS,
    METRICS,
    STATISTICS,
    MetricBounds,
    sensitivity,
    statistics,
)
from stamen.server.experiment_stats import (
    arm_estimates,
    cuped_estimates,
    experiment_report,
    outcome_sums,
)

BOUNDS = MetricBounds()
count = st.integers(0, 10**6)
counts_strategy = st.builds(
    lambda *v: PersonCounts(*(np.array([x]) for x in v)), count, count, count, count, count
)


@settings(max_examples=300, deadline=None)
@given(counts=counts_strategy, pre=counts_strategy, arm=st.integers(0, 2))
def test_one_person_moves_the_covariate_sums_by_at_most_the_sensitivity(
    counts: PersonCounts, pre: PersonCounts, arm: int
) -> None:
    vector = contributions(np.array([arm]), counts, n_arms=3, bounds=BOUNDS, pre=pre)[0]
    assert np.linalg.norm(vector) <= sensitivity(covariates=True) + 1e-12
    width = len(COVARIATE_STATISTICS)
    assert not np.delete(vector, np.arange(arm * width, (arm + 1) * width)).any()


def test_the_covariate_sensitivity_is_reached() -> None:
    # every metric at its bound in the window and the pre-period: the norm is sqrt(1 + 5M)
    full = PersonCounts(*(np.array([v]) for v in (20, 200, 200, 200, 200)))
    vector = contributions(np.array([0]), full, n_arms=2, bounds=BOUNDS, pre=full)[0]
    assert np.linalg.norm(vector) == pytest.approx(sensitivity(covariates=True))
    assert sensitivity(covariates=True) == pytest.approx(math.sqrt(21))
    assert sensitivity() == pytest.approx(3.0) and statistics() == STATISTICS


def _people(size: int, seed: int) -> tuple[np.ndarray, PersonCounts, PersonCounts]:
    rng = np.random.default_rng(seed)
    activity = rng.gamma(2.0, 1.0, size)

    def window() -> PersonCounts:
        sessions = rng.poisson(activity)
        impressions = sessions * 10
        engaged = rng.binomial(impressions, 0.05 + 0.1 * (activity > 2))
        return PersonCounts(
            sessions=sessions,
            impressions=impressions,
            engaged=engaged,
            positives=engaged + rng.poisson(0.5 * sessions),
            not_interested=rng.binomial(impressions - engaged, 0.02),
        )

    return rng.integers(0, 2, size), window(), window()


def test_cuped_without_noise_is_the_clear_computation() -> None:
    arms, counts, pre = _people(4000, 1)
    sums = summed_contributions(arms, counts, n_arms=2, bounds=BOUNDS, pre=pre)
    found = cuped_estimates(sums, noise_std=0.0, scales=BOUNDS.bounds())
    exposed = counts.impressions > 0
    y = metric_values(counts, BOUNDS)[exposed]
    x = np.where(pre.impressions[:, None] > 0, metric_values(pre, BOUNDS), 0.0)[exposed]
    arm = arms[exposed]
    for m in range(len(METRICS)):
        theta = np.cov(x[:, m], y[:, m], ddof=0)[0, 1] / np.var(x[:, m])
        assert found["theta"][m] == pytest.approx(theta)
        for a in (0, 1):
            ya, xa = y[arm == a, m], x[arm == a, m]
            adjusted = ya.mean() - theta * (xa.mean() - x[:, m].mean())
            assert found["mean"][a, m] == pytest.approx(adjusted)
            z = ya - theta * xa
            assert found["variance"][a, m] == pytest.approx(np.var(z) / len(z))
            assert found["plain_mean"][a, m] == pytest.approx(ya.mean())
    # the pre-period carries activity over: the effect's variance falls for exposures
    effect_var = found["variance"].sum(0)
    assert effect_var[0] < 0.9 * found["plain_variance"].sum(0)[0]


def test_noise_enters_the_cuped_variance_and_shrinks_theta() -> None:
    arms, counts, pre = _people(4000, 2)
    sums = summed_contributions(arms, counts, n_arms=2, bounds=BOUNDS, pre=pre)
    clear = cuped_estimates(sums, noise_std=0.0, scales=BOUNDS.bounds())
    noisy = cuped_estimates(sums, noise_std=30.0, scales=BOUNDS.bounds())
    assert np.all(np.abs(noisy["theta"]) < np.abs(clear["theta"]))
    assert np.all(noisy["variance"] > clear["variance"])


def test_the_default_layout_is_unchanged() -> None:
    arms, counts, pre = _people(500, 3)
    plain = summed_contributions(arms, counts, n_arms=2, bounds=BOUNDS)
    covariate = summed_contributions(arms, counts, n_arms=2, bounds=BOUNDS, pre=pre)
    assert plain.shape == (2, len(STATISTICS)) and covariate.shape == (2, len(COVARIATE_STATISTICS))
    assert outcome_sums(covariate) == pytest.approx(plain)
    rows = contributions(arms, counts, n_arms=2, bounds=BOUNDS)
    assert rows.shape == (500, 2 * len(STATISTICS)) and rows.sum(0) == pytest.approx(plain.ravel())
    for default, adjusted in zip(
        arm_estimates(plain, noise_std=2.0, scales=BOUNDS.bounds()),
        arm_estimates(plain, noise_std=2.0, scales=BOUNDS.bounds(), covariates=False),
        strict=True,
    ):
        assert np.array_equal(default, adjusted, equal_nan=True)
    report = experiment_report(
        covariate,
        experiment="e",
        arms=["A", "B"],
        metrics=METRICS,
        scales=BOUNDS.bounds(),
        noise_std=1.0,
        covariates=True,
    )
    assert report.effect("B", "engagement").stderr > 0
    with pytest.raises(ValueError, match="coordinates"):
        arm_estimates(plain, noise_std=0.0, scales=BOUNDS.bounds(), covariates=True)
