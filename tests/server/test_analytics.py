"""Private federated analytics: the devices' bounded vectors on hand-built cases, the
private sum's noise and accounting (strategy driven directly) and the settings that are
refused (on Flower's simulation engine: ``tests/integration/test_analytics_rounds.py``)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.common import FitRes, ndarrays_to_parameters
from helpers.static_clients import StaticClients
from helpers.updates import fit_res
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant
from pydantic import ValidationError

from stamen.client.flower.analytics import evaluation_vectors, trending_vectors
from stamen.client.flower.app import DeviceClient, DeviceData
from stamen.errors import ProtocolError
from stamen.models.analytics import query_scale
from stamen.models.wire import DeviceDP, Request, Task
from stamen.privacy import Purpose, SecAggSettings, UserDP
from stamen.server.analytics import PrivateSum
from stamen.server.settings import ServerSettings
from stamen.server.strategy import FederatedAveraging
from stamen.simulation.engines.flower import release_catalog_of
from stamen.simulation.engines.trending import population_trending_sum
from stamen.simulation.protocol.device_evaluation import HeldOut, evaluate_tasks

N_ITEMS = 40


# --- what a device computes ------------------------------------------------------------


def test_trending_counts_recent_items_up_to_the_cap_newest_first() -> None:
    rows = np.array([0, 0, 0, 0, 1, 1, 1])
    items = np.array([3, 1, 4, 2, 0, 5, 6])
    times = np.array([10.0, 50.0, 40.0, 95.0, 90.0, 90.0, 101.0])
    out = trending_vectors(
        rows, items, times, n_devices=3, n_items=8, now=100.0, window=60.0, cap=2
    )
    # device 0: 2 (t=95) and 1 (t=50) are inside (40, 100]; 4 sits on the window's edge
    assert np.flatnonzero(out[0]).tolist() == [1, 2]
    # device 1: 6 lies after now; 0 and 5 tie at t=90, and a cap of 2 keeps both
    assert np.flatnonzero(out[1]).tolist() == [0, 5]
    assert not out[2].any()  # a device without events counts nothing
    capped = trending_vectors(
        rows, items, times, n_devices=3, n_items=8, now=100.0, window=60.0, cap=1
    )
    assert np.flatnonzero(capped[0]).tolist() == [2]  # the newest
    assert np.flatnonzero(capped[1]).tolist() == [0]  # a tie: the lower row
    with pytest.raises(ValueError, match="window"):
        trending_vectors(rows, items, times, n_devices=3, n_items=8, now=1, window=0, cap=1)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 4), st.integers(0, 29), st.floats(0, 100)), max_size=80),
    st.integers(1, 6),
    st.floats(1, 100),
)
def test_a_device_moves_the_trending_sum_by_at_most_the_clip_norm(events, cap, window) -> None:
    """Whatever a device holds, its scaled vector has norm <= clip_norm: the sensitivity
    the accountant assumes."""
    rows = np.array([e[0] for e in events], np.int64)
    items = np.array([e[1] for e in events], np.int64)
    times = np.array([e[2] for e in events], np.float64)
    # one latest event per (device, item), as a device keeps them
    _, first = np.unique(rows * 1000 + items, return_index=True)
    rows, items, times = rows[first], items[first], times[first]
    out = trending_vectors(
        rows, items, times, n_devices=5, n_items=30, now=100.0, window=window, cap=cap
    )
    assert set(np.unique(out)) <= {0.0, 1.0}
    assert (out.sum(axis=1) <= cap).all()
    scaled = out * query_scale(width=cap, clip_norm=0.7)
    assert (np.linalg.norm(scaled, axis=1) <= 0.7 + 1e-12).all()


def test_evaluation_vectors_count_evaluating_devices_and_refuse_unbounded_metrics() -> None:
    metrics = np.array([[0.5, 1.0], [0.9, 0.9], [0.0, 0.25]])
    out = evaluation_vectors(metrics, np.array([True, False, True]))
    assert out.tolist() == [[1.0, 0.5, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.25]]
    with pytest.raises(ValueError, match="not in"):
        evaluation_vectors(np.array([[1.5]]), np.array([True]))
    # a device that does not evaluate may carry anything: it sends zeros
    assert not evaluation_vectors(np.array([[7.0]]), np.array([False])).any()


def _client(times: np.ndarray | None = None) -> DeviceClient:
    items = np.array([1, 2, 3])
    data = DeviceData(items, release_catalog_of(N_ITEMS), train_times=times)
    held_out = HeldOut(np.array([4]), np.array([5]), np.arange(10, 20))
    tasks = evaluate_tasks(lambda row: held_out)
    return DeviceClient(data, {}, seed=0, row=0, evaluate_tasks=tasks)  # type: ignore[arg-type]


def _shared(dim: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(size=(N_ITEMS, dim)).astype(np.float32), np.zeros(N_ITEMS, np.float32)]


def test_a_device_answers_trending_scaled_clipped_and_only_with_known_times() -> None:
    config = Request(
        task=Task.TRENDING,
        round=1,
        settings={
            "analytics-now": 100.0,
            "analytics-window": 30.0,
            "analytics-cap": 4,
            "analytics-scale": query_scale(width=4, clip_norm=1.0),
        },
        dp=DeviceDP(1.0, 0.0),
    ).to_config()
    upload, n, metrics = _client(np.array([50.0, 80.0, 99.0])).fit([], config)
    assert n == 1 and metrics == {}
    (vector,) = upload
    assert np.flatnonzero(vector).tolist() == [2, 3]  # 1 is older than the window
    assert np.allclose(vector[[2, 3]], 0.5)  # 1 / sqrt(cap)
    with pytest.raises(ValueError, match="event times"):
        _client(None).fit([], config)
    with pytest.raises(ProtocolError, match="'task' is 'salaries'; known tasks"):
        _client(np.zeros(3)).fit([], {**config, "task": "salaries"})


def test_a_device_answers_evaluation_with_its_own_metrics() -> None:
    request = Request(task=Task.MODEL, round=2, settings={"model": "mf", "dim": 4, "loss": "ials"})
    client = _client(np.zeros(3))
    _, n, clear = client.evaluate(_shared(), request.to_config())
    assert n == 1
    names = ("hr@20", "sampled_ndcg@10", "valid_hr@10")
    scale = query_scale(width=len(names) + 1, clip_norm=1.0)
    query = request.with_(
        task=Task.EVALUATION_SUM,
        evaluates=Task.MODEL,
        settings={
            **request.settings,
            "analytics-metrics": ",".join(names),
            "analytics-scale": scale,
        },
        dp=DeviceDP(1.0, 0.0),
    ).to_config()
    (vector,), _, metrics = client.fit(_shared(), query)
    assert metrics == {}
    assert np.allclose(vector / scale, [1.0, *(clear[name] for name in names)])
    with pytest.raises(ValueError, match="unknown metrics"):
        client.fit(_shared(), {**query, "analytics-metrics": "loss"})


# --- the private sum, driven directly --------------------------------------------------


def _owner(population: int) -> FederatedAveraging:
    settings = ServerSettings(
        rounds=4, clients_per_round=5, eval_every=0, secagg=SecAggSettings(enabled=False)
    )
    return FederatedAveraging(
        settings, initial=[np.zeros((N_ITEMS, 2), np.float32)], population=population
    )


def _trending_sum(
    population: int, *, width: int, dp: UserDP, releases: int, seed: int
) -> PrivateSum:
    """A plain (no SecAgg+) trending sum over the whole population, asked in round 1."""
    query = population_trending_sum(
        _owner(population), cap=width, dp=dp, users=population, releases=releases, seed=seed
    )
    query.ask([], Request(task=Task.TRENDING, round=1))
    return query


def _answers(vectors: np.ndarray) -> list[tuple[object, FitRes]]:
    return [(None, fit_res([v])) for v in vectors.astype(np.float32)]


def test_central_noise_matches_the_reported_std_and_opacus_accounts_it() -> None:
    population, width, z = 20, 4, 2.0
    dp = UserDP(mode="central", noise_multiplier=z)
    query = _trending_sum(population, width=width, dp=dp, releases=3, seed=1)
    cm = StaticClients(population)
    n_entries = 20_000
    assert len(query.configure_fit(1, ndarrays_to_parameters([]), cm)) == population
    rng = np.random.default_rng(0)
    indicators = (rng.random((population, n_entries)) < width / n_entries).astype(float)
    vectors = indicators * query.scale
    query.aggregate_fit(1, _answers(vectors), [])
    assert query.result is not None
    error = query.result.total - indicators.sum(axis=0)
    # one device moves the counts by sqrt(width): the noise std is z sqrt(width)
    assert query.result.noise_std == pytest.approx(z * np.sqrt(width))
    # the sample std of 20,000 draws is within 5% (~7 standard errors) of the true one
    assert error.std() == pytest.approx(z * np.sqrt(width), rel=0.05)
    assert abs(error.mean()) < 5 * z * np.sqrt(width) / np.sqrt(n_entries)
    reference = RDPAccountant()
    reference.history = [(z, 1.0, 1)]
    assert query.record.privacy is not None
    assert query.record.privacy.epsilon == pytest.approx(
        reference.get_epsilon(delta=1 / population)
    )


def test_a_plain_answer_above_the_clip_norm_is_rejected() -> None:
    population = 6
    query = _trending_sum(population, width=2, dp=UserDP(), releases=1, seed=0)
    query.configure_fit(1, ndarrays_to_parameters([]), StaticClients(population))
    vectors = np.zeros((3, 5))
    vectors[0, :2] = query.scale  # norm 1: fine
    vectors[1, :] = 3.0  # norm 6.7: a poisoned answer
    query.aggregate_fit(1, _answers(vectors), [])
    assert len(query.record.rejected or []) == 1
    assert query.result is not None and np.allclose(query.result.total, [1, 1, 0, 0, 0])


def test_a_secure_sum_no_honest_devices_can_reach_is_refused() -> None:
    """Under SecAgg+ the server sees only the sum (each result carries the mean): one
    beyond what clipped answers can sum to (a modified device's ring elements) releases
    nothing and fails the query with the reason."""
    population, width = 5, 2
    secagg = SecAggSettings(num_shares=3, reconstruction_threshold=2)
    query = PrivateSum(
        _owner(population),
        name="trending",
        width=width,
        dp=UserDP(),
        population=population,
        cohort=population,
        releases=1,
        secagg=secagg,
        seed=0,
        purpose=Purpose.TRENDING,
    )
    assert query.secagg is not None and query.secagg.clipping_range == 1.0  # its clip norm
    query.ask([], Request(task=Task.TRENDING, round=1))
    query.configure_fit(1, ndarrays_to_parameters([]), StaticClients(population))
    honest = np.zeros((population, 6))
    honest[:, :width] = query.scale  # every device at its clip norm, on the same items
    mean = honest.mean(axis=0)
    query.aggregate_fit(1, _answers(np.tile(mean, (population, 1))), [])
    assert query.result is not None and query.record.failed is None
    poisoned = mean.copy()
    poisoned[3] = 1.5  # the sum 7.5 in one entry: above 5 devices x range 1
    query.ask([], Request(task=Task.TRENDING, round=2))
    query.configure_fit(2, ndarrays_to_parameters([]), StaticClients(population))
    query.aggregate_fit(2, _answers(np.tile(poisoned, (population, 1))), [])
    assert query.result is None
    assert query.record.failed is not None and "honest devices can reach" in query.record.failed


def test_analytics_settings_that_would_leak_or_mis_account_are_refused() -> None:
    with pytest.raises(ValidationError, match="trending counts need secure aggregation"):
        ServerSettings(secagg=SecAggSettings(enabled=False), analytics={"trending": {"every": 1}})
    with pytest.raises(ValidationError, match="unset eval_clients"):
        ServerSettings(
            eval_clients=5,
            analytics={"evaluation": {"dp": {"mode": "central", "noise_multiplier": 1.0}}},
        )
    with pytest.raises(ValidationError, match="needs secagg"):
        ServerSettings(
            secagg=SecAggSettings(enabled=False), analytics={"evaluation": {"secure": True}}
        )
    assert ServerSettings().secure_evaluation  # SecAgg+ on: evaluation is a secure sum
    assert not ServerSettings(secagg=SecAggSettings(enabled=False)).secure_evaluation
