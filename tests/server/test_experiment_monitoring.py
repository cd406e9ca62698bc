"""Group-sequential boundaries against published constants, the α they spend, the
noise-aware correlation, and the false-positive rate of monitoring every look."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from stamen.server.experiment_monitoring import (
    classical_bounds,
    first_crossing,
    group_sequential_bounds,
    look_correlation,
    mixture_bounds,
    spending,
)

EQUAL5 = np.arange(1, 6) / 5


def _never_crossed(bounds: np.ndarray, correlation: np.ndarray) -> float:
    return float(
        stats.multivariate_normal.cdf(
            bounds,
            cov=correlation,
            lower_limit=-bounds,
            maxpts=100_000,
            abseps=1e-6,
            releps=0,
            rng=np.random.default_rng(1),
        )
    )


def test_classical_constants_match_the_published_tables() -> None:
    # Jennison & Turnbull (2000), tables 2.1 and 2.3: K = 5, two-sided α = 0.05
    assert classical_bounds(5, shape="pocock") == pytest.approx(np.full(5, 2.413), abs=2e-3)
    obf = classical_bounds(5, shape="obf")
    assert obf[-1] == pytest.approx(2.040, abs=2e-3)
    assert obf == pytest.approx(2.040 * np.sqrt(5 / np.arange(1, 6)), abs=5e-3)


def test_obrien_fleming_spending_bounds_match_gsdesign() -> None:
    # gsDesign: gsDesign(k = 5, test.type = 2, alpha = 0.025, sfu = sfLDOF)$upper$bound
    expected = [4.877, 3.357, 2.680, 2.290, 2.031]
    assert group_sequential_bounds(EQUAL5) == pytest.approx(expected, abs=2e-3)


def test_the_alpha_spent_sums_to_alpha_and_follows_the_spending_function() -> None:
    bounds = group_sequential_bounds(EQUAL5, kind="pocock")
    r = np.sqrt(np.minimum.outer(EQUAL5, EQUAL5) / np.maximum.outer(EQUAL5, EQUAL5))
    spent = [1 - _never_crossed(bounds[: k + 1], r[: k + 1, : k + 1]) for k in range(5)]
    assert spent == pytest.approx(spending(EQUAL5, kind="pocock"), abs=1e-4)
    assert spent[-1] == pytest.approx(0.05, abs=1e-4)
    assert spending(0.0) == 0 and spending(1.0) == pytest.approx(0.05)
    assert np.all(np.diff(spending(np.linspace(0, 1, 50))) >= 0)


def test_without_noise_the_correlation_is_the_canonical_one() -> None:
    variance = 1 / EQUAL5  # information proportional to the fraction
    canonical = np.sqrt(np.minimum.outer(EQUAL5, EQUAL5) / np.maximum.outer(EQUAL5, EQUAL5))
    assert look_correlation(variance, 0 * variance) == pytest.approx(canonical)
    noisy = look_correlation(variance, 0.5 * variance.min() * np.ones(5))
    off = ~np.eye(5, dtype=bool)
    assert np.all(noisy[off] < canonical[off]) and np.allclose(np.diag(noisy), 1)


def _z_paths(repetitions: int, noise_share: float, rng: np.random.Generator) -> np.ndarray:
    """z's of a mean over nested samples (equal increments) plus fresh noise each look whose
    variance is ``noise_share`` of the final look's total."""
    increments = rng.standard_normal((repetitions, 5))
    sampling = np.cumsum(increments, axis=1) / np.arange(1, 6)  # variance 1/k
    noise_var = noise_share / (1 - noise_share) * (1 / 5)
    noisy = sampling + rng.normal(0, np.sqrt(noise_var), (repetitions, 5))
    variance = 1 / np.arange(1, 6) + noise_var
    return noisy / np.sqrt(variance), variance, np.full(5, noise_var)


def test_monitoring_every_look_keeps_the_false_positive_rate_with_noise_aware_bounds() -> None:
    rng = np.random.default_rng(3)
    repetitions = 20_000
    z, variance, noise = _z_paths(repetitions, 0.8, rng)
    aware = group_sequential_bounds(EQUAL5, correlation=look_correlation(variance, noise))
    canonical = group_sequential_bounds(EQUAL5, correlation=look_correlation(variance, 0 * noise))
    # a valid rule rejects Binomial(20000, 0.05) times: outside these 1e-6 quantiles with
    # probability 2e-6
    low, high = stats.binom.ppf([1e-6, 1 - 1e-6], repetitions, 0.05) / repetitions
    rate = (first_crossing(z, aware) >= 0).mean()
    assert low <= rate <= high
    # the canonical correlation overstates how alike the noisy looks are: too many crossings
    assert (first_crossing(z, canonical) >= 0).mean() > high
    assert (first_crossing(z, np.full(5, 1.96)) >= 0).mean() > high  # naive repeated tests
    assert (first_crossing(z, mixture_bounds(EQUAL5)) >= 0).mean() <= high


def test_first_crossing_and_mixture_bounds() -> None:
    z = np.array([[0.0, 3.0, 5.0], [0.0, 0.0, 0.0], [9.0, 0.0, 0.0]])
    assert first_crossing(z, np.array([4.0, 2.5, 2.0])).tolist() == [1, -1, 0]
    mixture = mixture_bounds([0.25, 0.5, 1.0])
    assert np.all(np.diff(mixture) < 0) and mixture[-1] > stats.norm.isf(0.025)


@pytest.mark.parametrize(
    ("call", "word"),
    [
        (lambda: group_sequential_bounds([0.5, 0.4]), "fractions"),
        (lambda: group_sequential_bounds(EQUAL5, alpha=1.5), "alpha"),
        (lambda: group_sequential_bounds(EQUAL5, correlation=np.eye(3)), "correlation"),
        (lambda: spending(0.5, kind="linear"), "kind"),  # type: ignore[arg-type]
        (lambda: classical_bounds(0), "looks"),
        (lambda: look_correlation(np.ones(3), np.full(3, 2.0)), "noise_variance"),
        (lambda: mixture_bounds(EQUAL5, r=-1), "r"),
        (lambda: first_crossing(np.zeros((2, 3)), np.ones(4)), "bounds"),
    ],
)
def test_bad_arguments_are_named(call, word) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=word):
        call()
