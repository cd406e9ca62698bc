"""Experiments on the device: validation, HMAC self-assignment (uniform, stable,
independent), and the per-person clip that bounds a contribution's sensitivity."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from stamen.client.device.events import Event
from stamen.client.device.experiments import (
    Experiment,
    PersonCounts,
    assign,
    assignment_unit,
    contribution,
    contributions,
    summed_contributions,
)
from stamen.client.device.impressions import Impression
from stamen.errors import ConfigError
from stamen.models.experiments import METRICS, STATISTICS, MetricBounds, sensitivity

_RNG = np.random.default_rng(7)
SECRETS = [_RNG.bytes(32) for _ in range(6000)]


def _experiment(
    id: str = "exp", salt: str = "s1", weights: tuple[float, ...] = (1, 1, 2)
) -> Experiment:
    return Experiment(
        id=id,
        salt=salt,
        arms=[{"name": f"arm{i}", "weight": w} for i, w in enumerate(weights)],
    )


def test_invalid_experiment_names_every_field_at_fault() -> None:
    with pytest.raises(ConfigError) as caught:
        Experiment(
            id="",
            salt="s",
            arms=[
                {"name": "a", "weight": -1},
                {"name": "b", "overrides": {"explore": 2, "no_such_setting": 1}},
            ],
        )
    message = str(caught.value)
    for field in ("id:", "arms.0.weight:", "arms.1.overrides:", "explore", "no_such_setting"):
        assert field in message


def test_repeated_arm_names_and_a_single_arm_are_refused() -> None:
    with pytest.raises(ConfigError, match="names repeat"):
        Experiment(id="x", salt="s", arms=[{"name": "a"}, {"name": "a"}])
    with pytest.raises(ConfigError, match="arms"):
        Experiment(id="x", salt="s", arms=[{"name": "a"}])


def test_an_arm_applies_its_overrides_to_the_pipeline_settings() -> None:
    from stamen.client.pipeline.recommend import PipelineSettings

    experiment = Experiment(
        id="x", salt="s", arms=[{"name": "a"}, {"name": "b", "overrides": {"explore": 0.2}}]
    )
    base = PipelineSettings(mmr_lambda=0.5)
    assert experiment.arms[1].settings(base) == PipelineSettings(mmr_lambda=0.5, explore=0.2)
    assert Experiment.from_json(experiment.to_json()) == experiment


def test_assignment_is_uniform_over_weighted_arms() -> None:
    experiment = _experiment()
    arms = np.array([assign(experiment, device_secret=s) for s in SECRETS])
    observed = np.bincount(arms, minlength=3)
    expected = len(SECRETS) * np.array([0.25, 0.25, 0.5])
    # a correct assignment fails this at the 0.001 level once in a thousand seeds
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    units = np.array([assignment_unit(experiment, device_secret=s) for s in SECRETS])
    assert stats.kstest(units, "uniform").pvalue > 1e-3


def test_assignment_is_stable_and_depends_only_on_secret_id_and_salt() -> None:
    experiment = _experiment()
    again = Experiment.from_json(experiment.to_json())
    first = [assign(experiment, device_secret=s) for s in SECRETS[:200]]
    assert first == [assign(again, device_secret=s) for s in SECRETS[:200]]
    resalted = [assign(_experiment(salt="s2"), device_secret=s) for s in SECRETS[:200]]
    assert first != resalted


def test_two_experiments_assign_independently() -> None:
    one = np.array([assign(_experiment("one", weights=(1, 1)), device_secret=s) for s in SECRETS])
    two = np.array([assign(_experiment("two", weights=(1, 1)), device_secret=s) for s in SECRETS])
    table = np.array([[np.sum((one == a) & (two == b)) for b in (0, 1)] for a in (0, 1)])
    # a chi-square test of independence; fails for independent assignments once in a thousand
    assert stats.chi2_contingency(table).pvalue > 1e-3


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="16 random bytes"):
        assign(_experiment(), device_secret=b"short")


counts_strategy = st.builds(
    lambda s, i, e, p, n: PersonCounts(*(np.array([v]) for v in (s, i, e, p, n))),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
)


@settings(max_examples=300, deadline=None)
@given(counts=counts_strategy, arm=st.integers(0, 2))
def test_one_person_moves_the_sum_by_at_most_the_sensitivity(
    counts: PersonCounts, arm: int
) -> None:
    vector = contributions(np.array([arm]), counts, n_arms=3, bounds=MetricBounds())[0]
    assert np.linalg.norm(vector) <= sensitivity() + 1e-12
    assert sensitivity() == pytest.approx(3.0)
    width = len(STATISTICS)
    outside = np.delete(vector, np.arange(arm * width, (arm + 1) * width))
    assert not outside.any()
    assert vector.min() >= 0 and vector[arm * width] in (0.0, 1.0)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 1), *(st.integers(0, 500) for _ in range(5))),
        min_size=1,
        max_size=30,
    )
)
def test_summed_contributions_equal_the_sum_of_the_vectors(rows: list[tuple[int, ...]]) -> None:
    table = np.array(rows)
    counts = PersonCounts(*(table[:, j] for j in range(1, 6)))
    bounds = MetricBounds()
    full = contributions(table[:, 0], counts, n_arms=2, bounds=bounds).sum(axis=0)
    summed = summed_contributions(table[:, 0], counts, n_arms=2, bounds=bounds)
    np.testing.assert_allclose(summed.reshape(-1), full)


def test_a_device_contribution_counts_its_sessions_engagement_and_guardrail() -> None:
    hour = 3600.0
    start = 1_000_000.0
    shown = [
        Impression(request=1, position=p, item=f"i{p}", propensity=1.0, source="cf", at=start + 10)
        for p in range(4)
    ] + [
        Impression(
            request=2, position=0, item="j", propensity=1.0, source="cf", at=start + 5 * hour
        )
    ]
    events = [
        Event(item="i0", kind="click", at=start + 20),
        Event(item="i1", kind="not_interested", at=start + 30),
        Event(item="other", kind="play", at=start + 40),
        Event(item="j", kind="view", at=start - 10),  # before the impression: no engagement
    ]
    experiment = _experiment(weights=(1, 1))
    secret = SECRETS[0]
    vector = contribution(
        experiment,
        device_secret=secret,
        events=events,
        impressions=shown,
        start=start,
        end=start + 24 * hour,
    )
    arm = assign(experiment, device_secret=secret)
    block = vector.reshape(2, len(STATISTICS))[arm]
    bounds = MetricBounds().bounds()
    # 2 sessions (5 h apart), 1 of 5 impressions engaged, 2 positive events in 2 sessions,
    # 1 of 5 impressions marked not interested
    expected = np.array([2.0, 1 / 5, 2 / 2, 1 / 5]) / bounds
    assert block[0] == 1.0
    np.testing.assert_allclose(block[1::2], expected)
    np.testing.assert_allclose(block[2::2], expected**2)
    assert not vector.reshape(2, -1)[1 - arm].any()
    assert len(METRICS) == (len(STATISTICS) - 1) // 2


def test_a_person_without_impressions_contributes_nothing() -> None:
    vector = contribution(
        _experiment(),
        device_secret=SECRETS[1],
        events=[Event(item="a", kind="click", at=5.0)],
        impressions=[],
        start=0.0,
        end=10.0,
    )
    assert not vector.any()


def test_the_module_imports_neither_torch_nor_flwr() -> None:
    code = (
        "import sys, stamen.client.device.experiments; "
        "print(sorted(m for m in ('torch', 'flwr', 'opacus') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
