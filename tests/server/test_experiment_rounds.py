"""An experiment's measurement round driven directly (no Flower): what the server asks,
what a device answers, and the report from the released sums (over Flower:
``tests/integration/test_experiment_rounds.py``; on the loopback SuperLink:
``tests/integration/test_deployment_loopback.py``)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.common import ndarrays_to_parameters
from helpers.measurements import measuring_strategy
from helpers.static_clients import StaticClients
from helpers.updates import fit_res

from stamen.client.flower.app import DeviceClient, DeviceData
from stamen.errors import ConfigError
from stamen.models.analytics import query_scale
from stamen.models.experiments import METRICS, STATISTICS, MetricBounds, experiment_arms
from stamen.privacy import SecAggSettings, UserDP
from stamen.server.experiment_rounds import query_name
from stamen.server.experiment_stats import experiment_report
from stamen.server.settings import ServerSettings
from stamen.server.strategy import FederatedAveraging
from stamen.simulation.engines.flower import release_catalog_of

ARMS = ("control", "b", "c")
WIDTH = len(ARMS) * len(STATISTICS)


def _owner(population: int, **experiments: object) -> FederatedAveraging:
    return measuring_strategy(
        population, {"exp": ARMS, "other": ("a", "b")}, rounds=4, **experiments
    )


def test_the_server_asks_every_device_for_the_window_and_reports_the_released_sums() -> None:
    population = 8
    owner = _owner(population, every=2, start=100.0, now=200.0, alpha=0.1)
    measurements = owner.experiments
    assert measurements is not None
    assert [measurements.due(r) for r in (1, 2, 3, 4)] == [False, True, False, True]
    query = measurements.ask("exp", 2)
    asked = query.configure_fit(2, ndarrays_to_parameters([]), StaticClients(population))
    assert len(asked) == population  # rate 1: every device
    request = asked[0][1].config
    assert request["task"] == "experiment" and request["experiment-id"] == "exp"
    assert (request["experiment-start"], request["experiment-end"]) == (100.0, 200.0)
    assert request["experiment-arms"] == 3 and request["experiment-max-sessions"] == 20
    # the devices' (scaled, float32 as sent) contributions: their arm's block, zeros elsewhere
    rng = np.random.default_rng(0)
    blocks = np.zeros((population, WIDTH))
    for d in range(population):
        arm = d % len(ARMS)
        y = rng.random(len(METRICS))
        block = [1.0, *np.ravel(np.column_stack([y, y**2]))]
        blocks[d, arm * len(STATISTICS) : (arm + 1) * len(STATISTICS)] = block
    scale = query_scale(width=len(STATISTICS), clip_norm=1.0)
    answers = [(None, fit_res([v])) for v in (blocks * scale).astype(np.float32)]
    query.aggregate_fit(2, answers, [])
    record = measurements.take("exp")
    assert record.devices == population and record.failed is None
    expected = experiment_report(
        blocks.sum(axis=0).reshape(len(ARMS), len(STATISTICS)),
        experiment="exp",
        arms=ARMS,
        metrics=METRICS,
        scales=MetricBounds().bounds(),
        noise_std=0.0,
        alpha=0.1,
    ).to_json()
    report = record.report
    assert report is not None and report["alpha"] == 0.1
    assert [a["name"] for a in report["arms"]] == list(ARMS)
    for got, want in zip(report["effects"], expected["effects"], strict=True):
        assert got["arm"] == want["arm"] and got["metric"] == want["metric"]
        assert got["effect"] == pytest.approx(want["effect"], rel=1e-5)
        assert got["lower"] == pytest.approx(want["lower"], rel=1e-5)
    owner.record_query(query_name("exp"), record)
    assert owner._record.analytics is not None
    assert owner._record.analytics["experiment:exp"].report == report


def test_each_experiment_has_its_own_accountant_and_noise() -> None:
    dp = UserDP(mode="central", noise_multiplier=1.0)
    owner = _owner(10, every=1, dp=dp)
    measurements = owner.experiments
    assert measurements is not None
    first, second = measurements.queries["exp"], measurements.queries["other"]
    assert first.accountant is not second.accountant
    assert first.mechanism is not None and second.mechanism is not None
    noise = [
        q.mechanism.streams.central_noise(1, q.purpose).normal(size=4) for q in (first, second)
    ]
    assert not np.allclose(*noise)


def test_a_measurement_that_released_nothing_is_recorded_as_failed() -> None:
    owner = _owner(4, every=1)
    measurements = owner.experiments
    assert measurements is not None
    measurements.ask("exp", 1)
    record = measurements.take("exp")
    assert record.report is None and "halted" in (record.failed or "")


def _device(contribution):  # noqa: ANN001, ANN202
    data = DeviceData(np.array([1, 2]), release_catalog_of(10))
    return DeviceClient(
        data,
        {},  # type: ignore[arg-type]
        seed=0,
        row=0,
        experiment_contribution=contribution,
    )


def _config(owner: FederatedAveraging) -> dict:
    measurements = owner.experiments
    assert measurements is not None
    query = measurements.ask("exp", 1)
    return query.configure_fit(1, ndarrays_to_parameters([]), StaticClients(4))[0][1].config


def test_a_device_answers_with_its_scaled_contribution_or_zeros() -> None:
    config = _config(_owner(4, every=1, start=0.0, now=50.0))
    seen = {}

    def contribution(experiment, *, start, end, bounds):  # noqa: ANN001, ANN202
        seen.update(experiment=experiment, start=start, end=end, bounds=bounds)
        vector = np.zeros(WIDTH)
        vector[len(STATISTICS) : 2 * len(STATISTICS)] = 1.0  # arm b, every value at its bound
        return vector

    (sent,), n, metrics = _device(contribution).fit([], config)
    assert n == 1 and metrics == {}
    assert seen == {"experiment": "exp", "start": 0.0, "end": 50.0, "bounds": MetricBounds()}
    assert np.linalg.norm(sent) == pytest.approx(1.0)  # sqrt(9) entries of 1/3: the clip norm
    (nothing,), _, _ = _device(lambda *a, **k: None).fit([], config)
    assert nothing.shape == (WIDTH,) and not nothing.any()
    with pytest.raises(ValueError, match="3 arms need 27"):
        _device(lambda *a, **k: np.zeros(18)).fit([], config)


def test_the_server_reads_ids_and_arms_and_refuses_a_malformed_list() -> None:
    good = {"experiments": [{"id": "e", "arms": [{"name": "a"}, {"name": "b"}]}]}
    assert experiment_arms(good) == {"e": ("a", "b")}
    assert experiment_arms({}) == {}
    for bad, match in [
        ({"experiments": {}}, "a list"),
        ({"experiments": [{"arms": []}]}, "string id"),
        ({"experiments": [{"id": "e", "arms": [{"name": "a"}]}]}, "at least two"),
        ({"experiments": [{"id": "e", "arms": [{"name": "a"}, {"name": "a"}]}]}, "distinct"),
        ({"experiments": good["experiments"] * 2}, "repeats"),
    ]:
        with pytest.raises(ConfigError, match=match):
            experiment_arms(bad)


def test_measurements_need_secure_aggregation() -> None:
    with pytest.raises(ValueError, match="secure aggregation"):
        ServerSettings(
            secagg=SecAggSettings(enabled=False),
            analytics={"experiments": {"every": 1}},
        )


def _measure(owner: FederatedAveraging, rnd: int, blocks: np.ndarray) -> dict:
    """Round ``rnd``'s measurement of "exp" from the devices' ``blocks`` (plain sums), put
    into the run's history as the round's record; its report."""
    from stamen.server.rounds import RoundRecord

    measurements = owner.experiments
    assert measurements is not None
    query = measurements.ask("exp", rnd)
    query.configure_fit(rnd, ndarrays_to_parameters([]), StaticClients(len(blocks)))
    scale = query_scale(width=len(STATISTICS), clip_norm=1.0)
    query.aggregate_fit(rnd, [(None, fit_res([v])) for v in blocks * scale], [])
    record = measurements.take("exp")
    owner.history.append(RoundRecord(round=rnd, analytics={query_name("exp"): record}))
    assert record.report is not None
    return record.report


def _blocks(population: int, lift: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    blocks = np.zeros((population, WIDTH))
    for d in range(population):
        arm = d % len(ARMS)
        y = np.clip(rng.random(len(METRICS)) * 0.5 + (lift if arm == 1 else 0.0), 0, 1)
        block = [1.0, *np.ravel(np.column_stack([y, y**2]))]
        blocks[d, arm * len(STATISTICS) : (arm + 1) * len(STATISTICS)] = block
    return blocks.astype(np.float32).astype(np.float64)


def test_monitoring_compares_each_look_with_the_group_sequential_boundary() -> None:
    from stamen.server.experiment_monitoring import group_sequential_bounds

    owner = _owner(30, every=1, monitor=True)  # 4 rounds: 4 planned looks
    reports = [_measure(owner, rnd, _blocks(30, 0.3, rnd)) for rnd in (1, 2, 3, 4)]
    looks = [r["monitoring"] for r in reports]
    assert [m["look"] for m in looks] == [1, 2, 3, 4] and {m["looks"] for m in looks} == {4}
    for k, monitoring in enumerate(looks, start=1):
        effects = {(e["arm"], e["metric"]): e for e in monitoring["effects"]}
        assert set(effects) == {(a, m) for a in ARMS[1:] for m in METRICS}
        e = effects[("b", "engagement")]
        # no noise: the canonical boundary, as the spending function gives it
        variances = [
            {(x["arm"], x["metric"]): x for x in m["effects"]}[("b", "engagement")]["variance"]
            for m in looks[:k]
        ]
        from stamen.server.experiment_monitoring import look_correlation

        expected = group_sequential_bounds(
            [j / 4 for j in range(1, k + 1)],
            correlation=look_correlation(np.array(variances), np.zeros(k)),
            final=k == 4,
        )[-1]
        assert e["noise_variance"] == 0.0 and e["bound"] == pytest.approx(expected)
        assert e["crossed"] == (abs(e["z"]) >= e["bound"])
    engagement = [
        {(x["arm"], x["metric"]): x for x in m["effects"]}[("b", "engagement")] for m in looks
    ]
    assert engagement[0]["bound"] > engagement[-1]["bound"]  # O'Brien-Fleming: strict early
    assert engagement[-1]["stopped"]  # a lift of 0.3 on values of spread 0.14: found
    first = next(k for k, e in enumerate(engagement) if e["crossed"])
    assert all(e["stopped"] for e in engagement[first:])


def test_monitoring_plans_at_most_twenty_looks() -> None:
    with pytest.raises(ValueError, match="more than 20 looks"):
        ServerSettings(rounds=21, analytics={"experiments": {"every": 1, "monitor": True}})
    with pytest.raises(ValueError, match="needs measurements"):
        ServerSettings(analytics={"experiments": {"monitor": True}})


def test_monitoring_skips_an_effect_without_an_estimate() -> None:
    """An arm nobody was exposed in has no mean (None in the report): its effects get no
    boundary at this look, and the others are monitored as usual."""
    owner = _owner(30, every=1, monitor=True)
    blocks = _blocks(30, 0.3, 1)
    blocks[:, 2 * len(STATISTICS) :] = 0.0  # arm c: nobody exposed
    report = _measure(owner, 1, blocks)
    effects = {(e["arm"], e["metric"]): e for e in report["monitoring"]["effects"]}
    assert effects[("c", "engagement")]["crossed"] is False
    assert "reason" in effects[("c", "engagement")]
    assert "bound" in effects[("b", "engagement")]


def test_a_measurement_with_covariates_reports_cuped_of_the_clear_sums() -> None:
    """``pre_period_days``: the request names the pre-period, the query is scaled for the
    covariate layout's sensitivity sqrt(1 + 5M), and with the noise off the report's
    ``cuped`` part is exactly ``cuped_estimates`` of the devices' sums (its unadjusted part
    the plain report of their outcome coordinates)."""
    from stamen.client.device.experiments import PersonCounts, contributions
    from stamen.models.experiments import COVARIATE_STATISTICS, sensitivity
    from stamen.server.experiment_stats import cuped_estimates, effect_estimates, outcome_sums

    population, width = 60, len(COVARIATE_STATISTICS)
    owner = _owner(population, every=1, start=100_000.0, now=200_000.0, pre_period_days=1.0)
    measurements = owner.experiments
    assert measurements is not None
    query = measurements.ask("exp", 1)
    asked = query.configure_fit(1, ndarrays_to_parameters([]), StaticClients(population))
    request = asked[0][1].config
    assert request["experiment-pre-start"] == 100_000.0 - 86_400.0
    clip_norm = owner.settings.analytics.experiments.dp.clip_norm
    assert query.scale == pytest.approx(clip_norm / sensitivity(covariates=True))

    rng = np.random.default_rng(4)
    activity = rng.gamma(2.0, 1.0, population)

    def window() -> PersonCounts:
        sessions = rng.poisson(activity) + 1
        impressions = sessions * 5
        engaged = rng.binomial(impressions, 0.2)
        return PersonCounts(sessions, impressions, engaged, engaged, engaged // 3)

    arms = np.arange(population) % len(ARMS)
    rows = contributions(arms, window(), n_arms=len(ARMS), bounds=MetricBounds(), pre=window())
    sent = (rows * query.scale).astype(np.float32)  # what the devices send
    query.aggregate_fit(1, [(None, fit_res([v])) for v in sent], [])
    record = measurements.take("exp")
    report = record.report
    assert record.failed is None and report is not None and report["noise_std"] == 0.0
    # the released sums are the devices' clear sums (to float32, as the answers are sent)
    assert query.result is not None and query.result.noise_std == 0.0
    clear = query.result.total.reshape(len(ARMS), width)
    np.testing.assert_allclose(clear, rows.sum(axis=0).reshape(len(ARMS), width), rtol=1e-5)
    scales = MetricBounds().bounds()
    found = cuped_estimates(clear, noise_std=0.0, scales=scales)
    effects = effect_estimates(found["mean"], found["variance"], alpha=0.05)
    cuped = report["cuped"]
    assert cuped["theta"] == dict(zip(METRICS, found["theta"].tolist(), strict=True))
    for a, arm in enumerate(cuped["arms"]):
        assert arm["means"] == dict(zip(METRICS, found["mean"][a].tolist(), strict=True))
        assert arm["exposed"] == found["n"][a]
    for e in cuped["effects"]:
        a, m = ARMS.index(e["arm"]), METRICS.index(e["metric"])
        for key in ("effect", "stderr", "lower", "upper", "p_value"):
            assert e[key] == effects[key][a, m], (e["arm"], e["metric"], key)
    plain = experiment_report(
        outcome_sums(clear),
        experiment="exp",
        arms=ARMS,
        metrics=METRICS,
        scales=scales,
        noise_std=0.0,
    ).to_json()
    assert report["effects"] == plain["effects"] and report["arms"] == plain["arms"]
    # the pre-period's activity carries over: CUPED narrows the exposures' interval
    stderr = {(e["arm"], e["metric"]): e["stderr"] for e in report["effects"]}
    assert all(
        e["stderr"] < stderr[(e["arm"], "exposures")]
        for e in cuped["effects"]
        if e["metric"] == "exposures"
    )


def test_a_device_sends_the_covariate_layout_when_asked_for_a_pre_period() -> None:
    from stamen.models.experiments import COVARIATE_STATISTICS

    width = len(ARMS) * len(COVARIATE_STATISTICS)  # 3 arms of 1 + 5·4
    config = _config(_owner(4, every=1, start=100_000.0, now=200_000.0, pre_period_days=2.0))
    seen = {}

    def contribution(experiment, *, start, end, bounds, pre_start):  # noqa: ANN001, ANN202
        seen.update(start=start, pre_start=pre_start)
        return np.zeros(width)

    (sent,), _, _ = _device(contribution).fit([], config)
    assert seen == {"start": 100_000.0, "pre_start": 100_000.0 - 2 * 86_400.0}
    assert sent.shape == (width,)
    with pytest.raises(ValueError, match="3 arms need 63"):
        _device(lambda *a, **k: np.zeros(WIDTH)).fit([], config)


def test_covariates_need_the_experiments_start() -> None:
    with pytest.raises(ValueError, match="pre_period_days needs start"):
        ServerSettings(analytics={"experiments": {"every": 1, "pre_period_days": 7.0}})
