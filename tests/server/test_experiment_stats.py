"""An experiment's report: the interval's width is its formula's, the estimates are the clear
computation without noise, and each experiment has an accountant of its own."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from stamen.privacy.dp.streams import Purpose
from stamen.privacy.dp.user import UserDP
from stamen.server.experiment_stats import (
    arm_estimates,
    effect_estimates,
    experiment_mechanism,
    experiment_report,
)

METRICS = ["m1", "m2"]


def _sums(values: list[np.ndarray]) -> np.ndarray:
    """Per arm ``[n, Σy_1, Σy_1², Σy_2, Σy_2²]`` of people's scaled values (rows: people)."""
    rows = []
    for v in values:
        stats_ = [len(v)]
        for j in range(v.shape[1]):
            stats_ += [v[:, j].sum(), (v[:, j] ** 2).sum()]
        rows.append(stats_)
    return np.array(rows, np.float64)


def test_interval_width_matches_the_formula_on_a_known_case() -> None:
    # arm A: n = 100, Σy = 50, Σy² = 30 → μ = 0.5, Q = 30 − 50²/100 = 5
    # arm B: n = 200, Σy = 40, Σy² = 20 → μ = 0.2, Q = 20 − 40²/200 = 12
    sums = np.array([[100.0, 50.0, 30.0], [200.0, 40.0, 20.0]])
    sigma, scale = 2.0, 4.0
    var_a = (5 + sigma**2 * (1 + 0.5**2)) / 100**2 * scale**2
    var_b = (12 + sigma**2 * (1 + 0.2**2)) / 200**2 * scale**2
    report = experiment_report(
        sums, experiment="x", arms=["A", "B"], metrics=["m"], scales=[scale], noise_std=sigma
    )
    effect = report.effect("B", "m")
    z = stats.norm.ppf(0.975)
    assert effect.effect == pytest.approx((0.2 - 0.5) * scale)
    assert effect.upper - effect.lower == pytest.approx(2 * z * math.sqrt(var_a + var_b))
    assert effect.p_value == pytest.approx(2 * stats.norm.sf(1.2 / math.sqrt(var_a + var_b)))
    assert report.arms[0].stderrs["m"] == pytest.approx(math.sqrt(var_a))
    lift_se = math.sqrt(var_b + (0.2 / 0.5) ** 2 * var_a) / (0.5 * scale)
    assert effect.lift == pytest.approx(0.2 / 0.5 - 1)
    assert effect.lift_upper - effect.lift_lower == pytest.approx(2 * z * lift_se)
    assert effect.significant


def test_noise_widens_the_interval_by_its_variance_alone() -> None:
    sums = np.array([[100.0, 50.0, 30.0], [100.0, 50.0, 30.0]])
    _, clear, _ = arm_estimates(sums, noise_std=0.0, scales=[1.0])
    _, noisy, _ = arm_estimates(sums, noise_std=3.0, scales=[1.0])
    np.testing.assert_allclose(noisy - clear, 9.0 * (1 + 0.5**2) / 100**2)


def test_without_noise_the_estimates_are_the_clear_computation() -> None:
    rng = np.random.default_rng(3)
    people = [rng.random((400, 2)) ** 2, rng.random((300, 2))]
    scales = [20.0, 1.0]
    report = experiment_report(
        _sums(people),
        experiment="x",
        arms=["A", "B"],
        metrics=METRICS,
        scales=scales,
        noise_std=0.0,
    )
    for j, metric in enumerate(METRICS):
        means = [v[:, j].mean() * scales[j] for v in people]
        ses = [v[:, j].std() / math.sqrt(len(v)) * scales[j] for v in people]
        assert report.arms[0].means[metric] == pytest.approx(means[0])
        assert report.arms[1].stderrs[metric] == pytest.approx(ses[1])
        effect = report.effect("B", metric)
        assert effect.effect == pytest.approx(means[1] - means[0])
        assert effect.stderr == pytest.approx(math.hypot(*ses))
        assert effect.lift == pytest.approx(means[1] / means[0] - 1)
    assert report.arms[1].exposed == 300


def test_the_report_is_json_and_an_empty_arm_gives_no_estimate() -> None:
    sums = np.array([[0.0, 0.0, 0.0], [10.0, 5.0, 3.0]])
    report = experiment_report(
        sums,
        experiment="x",
        arms=["A", "B"],
        metrics=["m"],
        scales=[1.0],
        noise_std=1.0,
        privacy={"epsilon": 1.0, "delta": 1e-4},
    )
    data = json.loads(json.dumps(report.to_json()))
    assert data["arms"][0]["means"]["m"] is None
    assert data["effects"][0]["p_value"] is None
    assert data["privacy"]["epsilon"] == 1.0


def test_effects_are_vectorised_over_repetitions() -> None:
    rng = np.random.default_rng(0)
    sums = np.abs(rng.normal(50, 5, (7, 3, 5))) + np.array([100, 0, 0, 0, 0])
    mean, var, _ = arm_estimates(sums, noise_std=1.0, scales=[1.0, 2.0])
    batched = effect_estimates(mean, var, control=1)
    single = effect_estimates(mean[4], var[4], control=1)
    for key in ("effect", "stderr", "p_value", "lift_upper"):
        np.testing.assert_allclose(batched[key][4], single[key])
    assert np.isnan(batched["p_value"][:, 1]).all()


def test_each_experiment_has_its_own_accountant_and_noise_stream() -> None:
    assert experiment_mechanism(UserDP(), population=1000, sensitivity=3.0, seed=0) is None
    private = UserDP(mode="distributed", target_epsilon=1.0)
    one = experiment_mechanism(private, population=10_000, sensitivity=3.0, seed=0)
    two = experiment_mechanism(private, population=10_000, sensitivity=3.0, seed=1)
    assert one is not None and two is not None
    assert one.accountant is not two.accountant
    assert one.purpose is Purpose.EXPERIMENT
    assert one.sensitivity == 3.0 and one.sigma == pytest.approx(3.0 * one.noise_multiplier)
    assert one.accountant.settings.delta == pytest.approx(1e-4)
    one.release_sum(np.zeros(4), rnd=0)
    assert 0.9 < one.accountant.epsilon <= 1.0
    assert two.accountant.epsilon == 0.0


def test_no_relative_lift_against_a_control_mean_at_or_below_zero() -> None:
    """Noise can push a small arm's mean below zero; a lift relative to it would have the
    wrong sign, so there is none (the difference of means stays)."""
    from stamen.server.experiment_stats import effect_estimates

    mean = np.array([[-0.5, 0.2], [-0.3, 0.3]])
    variance = np.full((2, 2), 0.01)
    est = effect_estimates(mean, variance)
    assert est["effect"][1, 0] == pytest.approx(0.2)
    assert np.isnan(est["lift"][1, 0]) and np.isnan(est["lift_lower"][1, 0])
    assert est["lift"][1, 1] == pytest.approx(0.5)
