"""Off-policy evaluation's report: the estimates are the ratios of the sums, the standard
errors are the delta method's over people plus the noise's, written out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from stamen.privacy.dp.user import UserDP
from stamen.server.off_policy_stats import (
    moments,
    off_policy_estimates,
    off_policy_mechanism,
    off_policy_report,
)

#: Four people's first moments [n, g, a, b] for one candidate (W = 2).
Z = np.array(
    [
        [0.4, 0.10, 0.05, 0.20],
        [0.2, 0.00, 0.00, 0.10],
        [1.0, 0.30, 0.25, 0.45],
        [0.6, 0.20, 0.20, 0.35],
    ]
)
W = 2.0


def _sums(z: np.ndarray) -> np.ndarray:
    rows, cols = np.triu_indices(z.shape[1])
    return np.concatenate([z.sum(0), (z.T @ z)[rows, cols]])


def test_moments_unpack_the_layout() -> None:
    total, second = moments(_sums(Z), 1)
    np.testing.assert_allclose(total, Z.sum(0))
    np.testing.assert_allclose(second, Z.T @ Z)


@pytest.mark.parametrize("sigma", [0.0, 0.7])
def test_standard_errors_are_the_delta_method_over_people_plus_the_noise(sigma: float) -> None:
    n, g, a, b = Z.T
    tn, tg, ta, tb = Z.sum(0)
    v, ips, sn = tg / tn, W * ta / tn, ta / tb
    est = off_policy_estimates(_sums(Z), candidates=1, max_weights=[W], noise_std=sigma, alpha=0.1)
    assert est["logging"] == pytest.approx(v)
    assert est["ips"][0] == pytest.approx(ips)
    assert est["snips"][0] == pytest.approx(sn)
    # Each person's linearised term, summed in square, and the noise's variance.
    influence = {
        "logging": (g - v * n) / tn,
        "ips": (W * a - ips * n) / tn,
        "snips": (a - sn * b) / tb,
    }
    influence["ips_effect"] = influence["ips"] - influence["logging"]
    influence["snips_effect"] = influence["snips"] - influence["logging"]
    noise = {
        "logging": (1 + v**2) / tn**2,
        "ips": (W**2 + ips**2) / tn**2,
        "snips": (1 + sn**2) / tb**2,
        "ips_effect": (W**2 + 1 + (ips - v) ** 2) / tn**2,
        "snips_effect": (1 + sn**2) / tb**2 + (1 + v**2) / tn**2,
    }
    z = stats.norm.ppf(0.95)
    for key, terms in influence.items():
        se = math.sqrt(np.sum(terms**2) + sigma**2 * noise[key])
        got = np.ravel(est[f"{key}_stderr"])[0]
        assert got == pytest.approx(se), key
        width = np.ravel(est[f"{key}_upper"] - est[f"{key}_lower"])[0]
        assert width == pytest.approx(2 * z * se), key
    effect = sn - v
    p = 2 * stats.norm.sf(abs(effect) / est["snips_effect_stderr"][0])
    assert est["snips_effect"][0] == pytest.approx(effect)
    assert est["snips_effect_p_value"][0] == pytest.approx(p)


def test_estimates_are_batched_over_repetitions() -> None:
    sums = np.stack([_sums(Z), _sums(Z[:3]), _sums(Z[1:])])
    batched = off_policy_estimates(sums, candidates=1, max_weights=[W], noise_std=0.3)
    for r in range(3):
        one = off_policy_estimates(sums[r], candidates=1, max_weights=[W], noise_std=0.3)
        for key, value in one.items():
            np.testing.assert_allclose(batched[key][r], value, err_msg=key)


def test_the_report_is_json_ready_and_names_its_estimates() -> None:
    assert off_policy_mechanism(UserDP(), population=10, candidates=1, seed=0) is None
    report = off_policy_report(
        _sums(Z),
        evaluation="ope",
        candidates=["c"],
        max_weights=[W],
        noise_std=0.0,
        privacy={"epsilon": 1.0, "mode": "central"},
    )
    data = report.to_json()
    assert json.loads(json.dumps(data))["privacy"] == {"epsilon": 1.0, "mode": "central"}
    assert report.estimate("c", "ips").value == pytest.approx(W * Z[:, 2].sum() / Z[:, 0].sum())
    assert report.logging["value"] == pytest.approx(Z[:, 1].sum() / Z[:, 0].sum())
    with pytest.raises(KeyError, match="'d'"):
        report.estimate("d")
    empty = off_policy_report(
        np.zeros(14), evaluation="e", candidates=["c"], max_weights=[W], noise_std=1.0
    )
    assert empty.to_json()["logging"]["value"] is None


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="expected 14"):
        off_policy_estimates(np.zeros(13), candidates=1, max_weights=[W], noise_std=0)
    with pytest.raises(ValueError, match="max_weights"):
        off_policy_estimates(np.zeros(14), candidates=1, max_weights=[W, W], noise_std=0)
    with pytest.raises(ValueError, match="noise_std"):
        off_policy_estimates(np.zeros(14), candidates=1, max_weights=[W], noise_std=-1)
    with pytest.raises(ValueError, match="alpha"):
        off_policy_estimates(np.zeros(14), candidates=1, max_weights=[W], noise_std=0, alpha=1)
    with pytest.raises(ValueError, match="candidates"):
        moments(np.zeros(14), 0)


def test_each_candidate_is_estimated_as_if_it_were_alone() -> None:
    rng = np.random.default_rng(2)
    z = rng.uniform(0, 1, (40, 6))
    both = off_policy_estimates(_sums(z), candidates=2, max_weights=[2.0, 5.0], noise_std=0.4)
    for c, weight in enumerate((2.0, 5.0)):
        alone = off_policy_estimates(
            _sums(z[:, [0, 1, 2 + 2 * c, 3 + 2 * c]]),
            candidates=1,
            max_weights=[weight],
            noise_std=0.4,
        )
        for key, value in alone.items():
            got = both[key] if key.startswith("logging") else both[key][c]
            np.testing.assert_allclose(got, np.ravel(value)[0], err_msg=key)
