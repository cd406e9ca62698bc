"""An experiment's guardrails on the device: the definition, a list's diversity, the
guardrailed contribution's layout and the sensitivity bound it keeps."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers.signed_releases import small_mf_release
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.client import Device
from stamen.client.device.events import Event
from stamen.client.device.experiments import (
    Experiment,
    PersonCounts,
    assign,
    contribution,
    contributions,
    list_diversity,
)
from stamen.client.device.impressions import Impression
from stamen.errors import ConfigError
from stamen.models.experiments import (
    GUARDRAILS,
    METRICS,
    MetricBounds,
    experiment_arms,
    experiment_metrics,
    metric_set,
    sensitivity,
    statistics,
)
from stamen.privacy import generate_key, generate_signing_key

SECRET = bytes(range(32))
ARMS = [{"name": "a"}, {"name": "b"}]
GENRES = {"a": [0, 1], "b": [1, 2], "c": [3], "d": []}


def _genres(items):  # noqa: ANN001, ANN202
    return [np.array(GENRES.get(i, []), np.int64) for i in items]


def test_guardrails_are_chosen_from_the_known_ones_and_measured_in_a_fixed_order() -> None:
    experiment = Experiment(id="e", salt="s", arms=ARMS, guardrails=["latency", "diversity"])
    assert experiment.metrics == (*METRICS, "diversity", "latency") == (*METRICS, *GUARDRAILS)
    assert Experiment.from_json(experiment.to_json()) == experiment
    plain = Experiment(id="e", salt="s", arms=ARMS)
    assert plain.metrics == METRICS and "guardrails" not in plain.to_json()
    for bad in (["speed"], ["latency", "latency"]):
        with pytest.raises(ConfigError, match=r"guardrails: .*distinct names among"):
            Experiment(id="e", salt="s", arms=ARMS, guardrails=bad)
    extras = {"experiments": [{"id": "e", "arms": ARMS, "guardrails": ["latency"]}]}
    assert experiment_metrics(extras) == {"e": (*METRICS, "latency")}
    assert experiment_arms(extras) == {"e": ("a", "b")}
    assert experiment_metrics({"experiments": [{"id": "e", "arms": ARMS}]}) == {"e": METRICS}
    with pytest.raises(ConfigError, match=r"extras\.experiments\.0\.guardrails"):
        experiment_arms({"experiments": [{"id": "e", "arms": ARMS, "guardrails": ["x"]}]})


def test_a_lists_diversity_is_one_minus_its_mean_pairwise_jaccard_similarity() -> None:
    # pairs of a, b, c (d has no genres: left out): J(a, b) = 1/3, J(a, c) = J(b, c) = 0
    assert list_diversity(_genres("abcd")) == pytest.approx(1 - (1 / 3) / 3)
    assert list_diversity(_genres("ab")) == pytest.approx(2 / 3)
    assert list_diversity(_genres("aa")) == 0.0  # the same genres: no variety
    assert list_diversity(_genres("a")) == 0.0  # fewer than two items with genres
    assert list_diversity(_genres("ad")) == 0.0
    assert list_diversity(_genres("cx")) == 0.0  # x: not in the catalogue


def test_a_guardrailed_contribution_appends_diversity_and_latency_blocks() -> None:
    start, hour = 1_000_000.0, 3600.0

    def shown(request, items, at, latency):  # noqa: ANN001, ANN202
        return [
            Impression(request, p, item, 1.0, "cf", at, latency) for p, item in enumerate(items)
        ]

    impressions = (
        shown(1, "abcd", start + 10, 0.2)
        + shown(2, "c", start + 5 * hour, None)  # an app-built list: no latency
        + shown(3, "ab", start + 6 * hour, 0.6)
        + shown(4, "ab", start - 10, 9.0)  # before the window
    )
    events = [Event(item="a", kind="click", at=start + 20)]
    experiment = Experiment(id="e", salt="s", arms=ARMS, guardrails=["diversity", "latency"])
    bounds = MetricBounds(max_latency_s=0.5)
    vector = contribution(
        experiment,
        device_secret=SECRET,
        events=events,
        impressions=impressions,
        start=start,
        end=start + 24 * hour,
        bounds=bounds,
        genres=_genres,
    )
    plain = contribution(
        Experiment(id="e", salt="s", arms=ARMS),
        device_secret=SECRET,
        events=events,
        impressions=impressions,
        start=start,
        end=start + 24 * hour,
        bounds=bounds,
    )
    arm = assign(experiment, device_secret=SECRET)
    width = len(statistics(experiment.metrics))
    assert width == 1 + 2 * 6 and vector.shape == (2 * width,)
    block = vector.reshape(2, width)[arm]
    # the four metrics' coordinates are the plain experiment's
    np.testing.assert_array_equal(block[:9], plain.reshape(2, 9)[arm])
    diversity = (8 / 9 + 0.0 + 2 / 3) / 3  # three lists in the window; c alone counts 0
    latency = min((0.2 + 0.6) / 2, 0.5) / 0.5  # two timed lists, clipped, over the bound
    np.testing.assert_allclose(block[9:], [diversity, diversity**2, latency, latency**2])
    assert not vector.reshape(2, width)[1 - arm].any()
    with pytest.raises(ValueError, match="genres"):
        contribution(
            experiment,
            device_secret=SECRET,
            events=events,
            impressions=impressions,
            start=start,
            end=start + hour,
        )


guarded_counts = st.builds(
    lambda base, lists, div, timed, lat: PersonCounts(
        *(np.array([v]) for v in base),
        lists=np.array([lists]),
        diversity=np.array([div]),
        timed=np.array([timed]),
        latency_s=np.array([lat]),
    ),
    st.tuples(*(st.integers(0, 10**6) for _ in range(5))),
    st.integers(0, 50),
    st.floats(0, 50),
    st.integers(0, 50),
    st.floats(0, 1e4),
)


@settings(max_examples=300, deadline=None)
@given(
    counts=guarded_counts,
    arm=st.integers(0, 2),
    guardrails=st.sampled_from([("diversity",), ("latency",), GUARDRAILS]),
    covariates=st.booleans(),
)
def test_one_person_moves_a_guardrailed_sum_by_at_most_its_sensitivity(
    counts: PersonCounts, arm: int, guardrails: tuple[str, ...], covariates: bool
) -> None:
    metrics = metric_set(guardrails)
    pre = counts if covariates else None
    vector = contributions(
        np.array([arm]), counts, n_arms=3, bounds=MetricBounds(), pre=pre, metrics=metrics
    )[0]
    bound = sensitivity(len(metrics), covariates=covariates)
    assert bound == math.sqrt(1 + (5 if covariates else 2) * len(metrics))
    assert np.linalg.norm(vector) <= bound + 1e-12
    width = len(statistics(metrics, covariates=covariates))
    assert vector.shape == (3 * width,)
    assert not np.delete(vector, np.arange(arm * width, (arm + 1) * width)).any()
    # every value at its bound reaches it
    top = PersonCounts(
        *(np.array([v]) for v in (20, 1, 1, 100, 1)),
        lists=np.array([1]),
        diversity=np.array([1.0]),
        timed=np.array([1]),
        latency_s=np.array([5.0]),
    )
    at_bound = contributions(
        np.array([0]),
        top,
        n_arms=1,
        bounds=MetricBounds(),
        pre=top if covariates else None,
        metrics=metrics,
    )[0]
    assert np.linalg.norm(at_bound) == pytest.approx(bound)


def test_a_device_measures_its_lists_diversity_from_its_releases_genres(tmp_path) -> None:
    at = 1_700_000_000.0
    experiment = {"id": "g", "salt": "s", "arms": ARMS, "guardrails": ["diversity", "latency"]}
    private, public = generate_signing_key()
    with Device.open(tmp_path / "d", key=generate_key(), release_key=public, seed=0) as device:
        genres = [[f"g{i % 3}", f"g{i % 5}"] for i in range(20)]
        extras = {"experiments": [experiment]}
        device.apply_release(small_mf_release(1, private, extras=extras, genres=genres))
        shown = device.recommend(5, at=at)
        device.log_shown(shown, at=at)
        vector = device.experiment_contribution("g", start=at - 1, end=at + 60)
        serving = device._serving
        assert serving is not None
        rows = serving.bundle.catalog.index_of([p.item for p in shown])
        expected = list_diversity([serving.index.genres.row(int(r)) for r in rows])
        names = [set(genres[int(p.item.removeprefix("item-"))]) for p in shown]
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
        by_hand = 1 - np.mean([len(a & b) / len(a | b) for a, b in pairs])
        arm = assign(Experiment.from_json(experiment), device_secret=device._experiment_secret())
    assert 0 < expected == pytest.approx(by_hand)
    width = len(statistics(metric_set(GUARDRAILS)))
    assert vector is not None and vector.shape == (2 * width,)
    block = vector.reshape(2, width)[arm]
    latency = shown[0].latency_s
    assert latency is not None
    np.testing.assert_allclose(
        block[9:], [expected, expected**2, min(latency, 1.0), min(latency, 1.0) ** 2]
    )
