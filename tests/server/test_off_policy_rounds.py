"""The off-policy evaluation round driven directly (no Flower): what the server asks, what a
device answers, the report from the released sums, and the evaluation's own accountant
(over Flower: ``tests/integration/test_off_policy_rounds.py``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.common import ndarrays_to_parameters
from helpers.cli import ok
from helpers.deployment_runs import release_init, run_config
from helpers.measurements import measuring_strategy
from helpers.signed_releases import newest_release
from helpers.static_clients import StaticClients
from helpers.updates import fit_res

from stamen.client.device.off_policy import OffPolicyBounds, contributions, first_moments
from stamen.client.flower.app import DeviceClient, DeviceData
from stamen.errors import ConfigError
from stamen.models.analytics import query_scale
from stamen.models.off_policy import candidate_policies, width
from stamen.privacy import UserDP
from stamen.server.off_policy_rounds import OFF_POLICY
from stamen.server.off_policy_stats import off_policy_report
from stamen.server.strategy import FederatedAveraging
from stamen.simulation.engines.flower import release_catalog_of

CANDIDATES = {"more": 3.0, "none": 1.5}
WIDTH = width(len(CANDIDATES))


def _owner(population: int, **experiments: object) -> FederatedAveraging:
    owner = measuring_strategy(population, {"exp": ("a", "b")}, rounds=2, **experiments)
    owner.evaluate_candidates(CANDIDATES)
    return owner


def _vectors(population: int, seed: int = 0) -> np.ndarray:
    """``population`` people's contributions: 12 logged slots each, random rewards,
    propensities and candidate probabilities, through the device's own clipping."""
    rng = np.random.default_rng(seed)
    shown = np.ones((population, 12))
    logged = rng.uniform(0.2, 1.0, shown.shape)
    target = rng.uniform(0.0, 1.0, (*shown.shape, len(CANDIDATES)))
    engaged = (rng.random(shown.shape) < 0.3).astype(float)
    bounds = OffPolicyBounds(max_slots=10, max_weight=tuple(CANDIDATES.values()))
    return contributions(first_moments(engaged, shown, logged, target, bounds=bounds))


def _clear_report(vectors: np.ndarray, **options: float) -> dict:
    """The report of the devices' ``vectors`` summed in the clear, without noise."""
    return off_policy_report(
        vectors.sum(axis=0),
        evaluation=OFF_POLICY,
        candidates=list(CANDIDATES),
        max_weights=list(CANDIDATES.values()),
        noise_std=0.0,
        **options,
    ).to_json()


def test_the_server_asks_every_device_and_reports_the_released_sums() -> None:
    """Noise off: every device is asked for the candidates in the release's order with
    their clips and the window; the report is ``off_policy_report`` of the clear sum, with
    ε = ∞; the run asks the experiments first, then the evaluation."""
    population = 8
    owner = _owner(population, every=1, start=100.0, now=200.0, alpha=0.1)
    assert [m.name(k) for m in owner.measurements() for k in m.queries] == [
        "experiment:exp",
        OFF_POLICY,
    ]
    evaluation = owner.off_policy
    assert evaluation is not None and evaluation.due(1)
    query = evaluation.ask(OFF_POLICY, 1)
    asked = query.configure_fit(1, ndarrays_to_parameters([]), StaticClients(population))
    assert len(asked) == population  # rate 1: every device
    request = asked[0][1].config
    assert request["task"] == "off-policy"
    assert json.loads(request["off-policy-candidates"]) == ["more", "none"]
    assert json.loads(request["off-policy-max-weights"]) == [3.0, 1.5]
    assert request["off-policy-max-slots"] == 50
    assert (request["experiment-start"], request["experiment-end"]) == (100.0, 200.0)
    vectors = _vectors(population)
    scale = query_scale(width=WIDTH, clip_norm=1.0)
    answers = [(None, fit_res([v])) for v in (vectors * scale).astype(np.float32)]
    query.aggregate_fit(1, answers, [])
    record = evaluation.take(OFF_POLICY)
    assert record.devices == population and record.failed is None
    want = _clear_report(vectors, alpha=0.1)
    got = record.report
    assert got is not None and got["privacy"]["epsilon"] is None  # ∞: no noise
    assert got["alpha"] == 0.1 and got["noise_std"] == 0.0
    for key in ("value", "stderr", "lower", "upper"):
        assert got["logging"][key] == pytest.approx(want["logging"][key], rel=1e-5, abs=1e-6)
    assert [(c["candidate"], c["estimator"]) for c in got["candidates"]] == [
        ("more", "ips"),
        ("more", "snips"),
        ("none", "ips"),
        ("none", "snips"),
    ]
    for g, w in zip(got["candidates"], want["candidates"], strict=True):
        for key in ("value", "lower", "upper", "effect", "effect_lower", "effect_upper"):
            # float32 answers: a small absolute error on a difference near 0
            assert g[key] == pytest.approx(w[key], rel=1e-5, abs=1e-6), (g["candidate"], key)


def test_the_evaluation_has_its_own_accountant_and_reports_its_epsilon() -> None:
    """Central DP at ε = 2 over the run's measurements: the evaluation's accountant is not
    any experiment's nor training's (off here), its noise stream differs, and its report
    carries its ε (at most the target) and a noise std that widens the intervals."""
    population = 40
    dp = UserDP(mode="central", target_epsilon=2.0)
    owner = _owner(population, every=1, dp=dp)
    evaluation, experiments = owner.off_policy, owner.experiments
    assert evaluation is not None and experiments is not None
    query, other = evaluation.queries[OFF_POLICY], experiments.queries["exp"]
    assert owner.accountant is None
    assert query.accountant is not None and query.accountant is not other.accountant
    assert query.mechanism is not None and other.mechanism is not None
    noise = [q.mechanism.streams.central_noise(1, q.purpose).normal(size=4) for q in (query, other)]
    assert not np.allclose(*noise)
    evaluation.ask(OFF_POLICY, 1)
    query.configure_fit(1, ndarrays_to_parameters([]), StaticClients(population))
    vectors = _vectors(population)
    scale = query_scale(width=WIDTH, clip_norm=1.0)
    query.aggregate_fit(1, [(None, fit_res([v])) for v in vectors * scale], [])
    record = evaluation.take(OFF_POLICY)
    report = record.report
    assert report is not None and record.privacy is not None
    epsilon = report["privacy"]["epsilon"]
    assert 0 < epsilon <= 2.0 + 1e-6 and epsilon == pytest.approx(record.privacy.epsilon)
    assert report["noise_std"] > 0
    assert report["noise_std"] == pytest.approx(query.mechanism.sigma / scale)
    clear = _clear_report(vectors)
    assert report["logging"]["stderr"] > clear["logging"]["stderr"]


def _device(contribution):  # noqa: ANN001, ANN202
    return DeviceClient(
        DeviceData(np.array([1, 2]), release_catalog_of(10)),
        {},  # type: ignore[arg-type]
        seed=0,
        row=0,
        off_policy_contribution=contribution,
    )


def test_a_device_answers_with_its_scaled_contribution_or_zeros() -> None:
    owner = _owner(4, every=1, start=0.0, now=50.0)
    assert owner.off_policy is not None
    query = owner.off_policy.ask(OFF_POLICY, 1)
    config = query.configure_fit(1, ndarrays_to_parameters([]), StaticClients(4))[0][1].config
    seen = {}

    def contribution(candidates, **window):  # noqa: ANN001, ANN003, ANN202
        seen.update(candidates=candidates, **window)
        return np.ones(WIDTH)  # every entry at its bound: the largest norm, sqrt(width)

    (sent,), n, metrics = _device(contribution).fit([], config)
    assert n == 1 and metrics == {}
    assert seen == {
        "candidates": ["more", "none"],
        "max_weights": [3.0, 1.5],
        "start": 0.0,
        "end": 50.0,
        "max_slots": 50,
        "attribution_s": 86400.0,
    }
    assert np.linalg.norm(sent) == pytest.approx(1.0)  # the clip norm
    (nothing,), _, _ = _device(lambda *a, **k: None).fit([], config)
    assert nothing.shape == (WIDTH,) and not nothing.any()
    with pytest.raises(ValueError, match=f"2 candidates need {WIDTH}"):
        _device(lambda *a, **k: np.zeros(WIDTH - 1)).fit([], config)


def test_the_server_reads_names_and_clips_and_refuses_bad_candidates() -> None:
    good = {"candidate_policies": [{"name": "a", "max_weight": 2}, {"name": "b"}]}
    assert candidate_policies(good) == {"a": 2.0, "b": 10.0}
    assert candidate_policies({}) == {}
    for bad, match in [
        ({"candidate_policies": {}}, "a list"),
        ({"candidate_policies": [{"max_weight": 2}]}, r"candidate_policies\.0: .*name"),
        ({"candidate_policies": [{"name": "a", "max_weight": 0.5}]}, "at least 1"),
        ({"candidate_policies": [{"name": "a", "max_weight": "x"}]}, "a number"),
        ({"candidate_policies": [{"name": "a"}, {"name": "a"}]}, "repeats"),
    ]:
        with pytest.raises(ConfigError, match=match):
            candidate_policies(bad)


def test_an_evaluation_needs_candidates() -> None:
    owner = _owner(4, every=1)
    owner.evaluate_candidates({})
    assert owner.off_policy is None
    from stamen.server.off_policy_rounds import OffPolicyEvaluation

    with pytest.raises(ValueError, match="at least one candidate"):
        OffPolicyEvaluation(owner, {})


def test_a_deployment_evaluates_the_candidates_of_the_release_it_starts_from(tmp_path) -> None:
    """``stamen experiment candidates`` publishes them; a run started from that release with
    ``experiment-every`` evaluates them (with the run config's slot clip) and carries them
    into its releases; a starting release with a bad candidate is refused, named."""
    from stamen.models.registry import build_model
    from stamen.server.deployment import Deployment, carried_extras, deployment_strategy
    from stamen.server.releases import ReleaseWriter, load_or_create_signing_key

    releases, key = release_init(tmp_path)
    definition = tmp_path / "candidates.json"
    definition.write_text(json.dumps({"candidates": [{"name": "more", "max_weight": 3.0}]}))
    ok(
        ["experiment", "candidates", str(definition), "--releases", str(releases)]
        + ["--signing-key", str(key)]
    )
    run = run_config(
        tmp_path,
        releases,
        key,
        **{"population": 3, "experiment-every": 1, "experiment-off-policy-max-slots": 7},
    )
    strategy = deployment_strategy(Deployment(run))
    assert strategy.experiments is None  # the release carries no A/B experiment
    assert strategy.off_policy is not None and strategy.off_policy.candidates == {"more": 3.0}
    assert strategy.off_policy.settings_of(OFF_POLICY, start=0.0)["off-policy-max-slots"] == 7
    private, public = load_or_create_signing_key(key)
    newest = newest_release(releases, public)
    assert carried_extras(newest) == {
        "candidate_policies": [{"name": "more", "overrides": {}, "max_weight": 3.0}]
    }
    # a release whose candidates the server cannot read: the run does not start
    ReleaseWriter(
        releases,
        private_key=private,
        public_key=public,
        model=build_model(newest.model, dict(newest.settings), newest.catalog),
        extras={"candidate_policies": [{"name": "more", "max_weight": 0.5}]},
    ).publish(newest.release + 1, newest.shared_arrays())
    with pytest.raises(ConfigError, match=rf"release {newest.release + 1}: .*max_weight"):
        deployment_strategy(Deployment(run))
