"""A guardrailed experiment's measurement round driven directly (no Flower): the request
names its guardrails, a device answers blocks of their width, and the report carries the
guardrails beside the four metrics, equal to the clear computation with the noise off."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.common import ndarrays_to_parameters
from helpers.measurements import measuring_strategy
from helpers.static_clients import StaticClients
from helpers.updates import fit_res

from stamen.client.flower.app import DeviceClient, DeviceData
from stamen.models.analytics import query_scale
from stamen.models.experiments import (
    GUARDRAILS,
    STATISTICS,
    MetricBounds,
    metric_set,
    statistics,
)
from stamen.simulation.engines.flower import release_catalog_of

ARMS = ("control", "b", "c")
GUARDED = metric_set(GUARDRAILS)
LAYOUT = statistics(GUARDED)
BOUNDS = MetricBounds(max_latency_s=0.4)


def _measurements(population: int, **settings: object):  # noqa: ANN202
    owner = measuring_strategy(
        population, {"exp": ARMS, "plain": ("a", "b")}, rounds=4, bounds=BOUNDS, **settings
    )
    owner.measure_experiments({"exp": ARMS, "plain": ("a", "b")}, {"exp": GUARDED})
    assert owner.experiments is not None
    return owner.experiments


def test_a_guardrailed_report_equals_the_clear_computation_with_the_noise_off() -> None:
    population = 12
    measurements = _measurements(population, every=1, start=0.0, now=50.0, monitor=True)
    assert measurements.expected("exp") == len(ARMS) * (1 + 2 * 6)
    assert measurements.expected("plain") == 2 * len(STATISTICS)
    query = measurements.ask("exp", 1)
    asked = query.configure_fit(1, ndarrays_to_parameters([]), StaticClients(population))
    request = asked[0][1].config
    assert request["experiment-guardrails"] == "diversity,latency"
    assert request["experiment-max-latency-s"] == 0.4
    plain = measurements.ask("plain", 1)
    config = plain.configure_fit(1, ndarrays_to_parameters([]), StaticClients(population))
    assert "experiment-guardrails" not in config[0][1].config
    rng = np.random.default_rng(3)
    y = rng.random((population, len(GUARDED)))
    arms = np.arange(population) % len(ARMS)
    blocks = np.zeros((population, len(ARMS) * len(LAYOUT)))
    for d in range(population):
        block = [1.0, *np.ravel(np.column_stack([y[d], y[d] ** 2]))]
        blocks[d, arms[d] * len(LAYOUT) : (arms[d] + 1) * len(LAYOUT)] = block
    scale = query_scale(width=len(LAYOUT), clip_norm=1.0)
    query.aggregate_fit(1, [(None, fit_res([v])) for v in (blocks * scale).astype(np.float32)], [])
    report = measurements.take("exp").report
    assert report is not None
    # the clear computation: each arm's mean of each metric in its own units
    units = BOUNDS.bounds(GUARDED)
    for a, arm in enumerate(report["arms"]):
        assert list(arm["means"]) == list(GUARDED)
        clear = y[arms == a].mean(axis=0) * units
        np.testing.assert_allclose([arm["means"][m] for m in GUARDED], clear, rtol=1e-5)
    effects = {(e["arm"], e["metric"]): e for e in report["effects"]}
    assert set(effects) == {(a, m) for a in ARMS[1:] for m in GUARDED}
    for a, name in enumerate(ARMS[1:], start=1):
        for j, metric in enumerate(GUARDED):
            truth = (y[arms == a, j].mean() - y[arms == 0, j].mean()) * units[j]
            sample = y[arms == a, j].var() / (arms == a).sum()
            sample += y[arms == 0, j].var() / (arms == 0).sum()
            e = effects[(name, metric)]
            assert e["effect"] == pytest.approx(truth, rel=1e-4, abs=1e-6)
            assert e["stderr"] == pytest.approx(np.sqrt(sample) * units[j], rel=1e-4)
    watched = {(e["arm"], e["metric"]) for e in report["monitoring"]["effects"]}
    assert watched == set(effects)


def test_a_device_answers_a_guardrailed_request_with_blocks_of_its_width() -> None:
    measurements = _measurements(4, every=1, start=0.0, now=50.0)
    query = measurements.ask("exp", 1)
    config = query.configure_fit(1, ndarrays_to_parameters([]), StaticClients(4))[0][1].config
    width = len(ARMS) * len(LAYOUT)

    def device(contribution):  # noqa: ANN001, ANN202
        data = DeviceData(np.array([1, 2]), release_catalog_of(10))
        return DeviceClient(data, {}, seed=0, row=0, experiment_contribution=contribution)  # type: ignore[arg-type]

    seen = {}

    def contribution(experiment, *, start, end, bounds):  # noqa: ANN001, ANN202
        seen.update(bounds=bounds)
        vector = np.zeros(width)
        vector[: len(LAYOUT)] = 1.0  # the control arm, every value at its bound
        return vector

    (sent,), _, _ = device(contribution).fit([], config)
    assert seen["bounds"] == BOUNDS
    assert np.linalg.norm(sent) == pytest.approx(1.0)  # sqrt(13) entries of 1/sqrt(13)
    (nothing,), _, _ = device(lambda *a, **k: None).fit([], config)
    assert nothing.shape == (width,) and not nothing.any()
    with pytest.raises(ValueError, match=f"3 arms need {width}"):
        device(lambda *a, **k: np.zeros(len(ARMS) * len(STATISTICS))).fit([], config)
