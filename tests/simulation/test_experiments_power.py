"""benchmarks/experiments_power.py's pure parts: the formula's power is the textbook
two-sample z-test's without noise and drops with it, and the injected lift is exact."""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from types import ModuleType

import numpy as np
import pytest
from helpers.paths import ROOT
from scipy import stats

from stamen.models.experiments import METRICS, MetricBounds
from stamen.simulation.experiments.response import (
    ResponseModel,
    synthetic_population,
    true_means,
    variant_lists,
    variant_response,
)

ENGAGEMENT = METRICS.index("engagement")


@pytest.fixture(scope="module")
def power() -> ModuleType:
    benchmarks = str(ROOT / "benchmarks")
    sys.path.insert(0, benchmarks)  # the script imports its sibling ``common``
    try:
        spec = importlib.util.spec_from_file_location(
            "experiments_power", ROOT / "benchmarks" / "experiments_power.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(benchmarks)
    return module


def test_noise_free_power_is_the_two_sample_z_test(power: ModuleType) -> None:
    # Cohen's table: d = 0.2 needs 393 per group for 80% power at two-sided α = 0.05.
    got = power.formula_power(
        786, sigma=0.0, effect=0.2, means=(0.0, 0.2), variances=(1.0, 1.0), exposed=1.0
    )
    assert got == pytest.approx(0.8, abs=0.002)
    # And in closed form: n per arm, sd s, effect Δ.
    n, s, delta = 5000, 0.3, 0.015
    shift = delta / (s * math.sqrt(2 / n))
    z = stats.norm.ppf(0.975)
    textbook = stats.norm.cdf(shift - z) + stats.norm.cdf(-shift - z)
    got = power.formula_power(
        2 * n,
        sigma=0.0,
        effect=-delta,
        means=(0.5, 0.5 - delta),
        variances=(s**2, s**2),
        exposed=1.0,
    )
    assert got == pytest.approx(textbook, rel=1e-12)
    # No effect: the power is the level.
    assert power.formula_power(
        1000, sigma=3.0, effect=0.0, means=(0.1, 0.1), variances=(0.01, 0.01), exposed=0.5
    ) == pytest.approx(0.05)


def test_noise_lowers_power_and_devices_needed_inverts_it(power: ModuleType) -> None:
    figures = {"means": [0.035, 0.0357], "variances": [0.002, 0.002], "exposed": 0.75}
    figures["effect"] = figures["means"][1] - figures["means"][0]
    args = argparse.Namespace(mode="distributed", alpha=0.05, power=0.8)
    clear = power.power_at(100_000, math.inf, figures, args)
    noisy = power.power_at(100_000, 1.0, figures, args)
    assert 0.05 < noisy < clear < 0.8
    for epsilon in (1.0, math.inf):
        needed = power.devices_needed(epsilon, figures, args)
        assert power.power_at(needed, epsilon, figures, args) >= 0.8
        assert power.power_at(needed - 1, epsilon, figures, args) < 0.8
    assert power.devices_needed(1.0, figures, args) > power.devices_needed(math.inf, figures, args)


def test_lifted_response_lifts_engagement_exactly(power: ModuleType) -> None:
    population = synthetic_population(500, n_items=300, seed=3)
    model = ResponseModel()
    control = variant_response(population, variant_lists(population, {}, base="taste"), model)
    lifted = power.lifted_response(control, 1.02)
    truth = true_means(population, [control, lifted], model, MetricBounds())
    assert truth[1, ENGAGEMENT] == pytest.approx(1.02 * truth[0, ENGAGEMENT], rel=1e-12)
    # Every shown slot is drawn on its own at its lifted probability.
    shown = np.count_nonzero(control.slot_p > 0)
    assert len(lifted.hit_p) == shown and lifted.misses.sum() == 0
    assert lifted.hit_p.sum() == pytest.approx(1.02 * control.slot_p.sum())
    with pytest.raises(ValueError, match="exceeds 1"):
        power.lifted_response(control, 10.0)
