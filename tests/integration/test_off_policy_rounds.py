"""The off-policy evaluation round on Flower's simulation engine: four devices that logged
what they showed (with exploration) and what followed, and a release that ships two
candidate policies none of them serves. What each device sends is audited (an outermost
ClientApp mod sees exactly what leaves it); with the noise off the server's report is the
estimate from the devices' own vectors summed in the clear, and with DP on it carries the
evaluation's own ε (the pieces on hand-built cases: ``tests/server/test_off_policy_rounds.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.capture import Capture, assert_masked_only, read_captured, task_of
from helpers.flower_rounds import RecordingMF, run_recorded, secagg_config
from helpers.populations import timed_population

from stamen.client.flower.virtual import VirtualDevices
from stamen.client.pipeline.recommend import PipelineSettings
from stamen.models.analytics import query_scale
from stamen.models.experiments import MetricBounds
from stamen.models.off_policy import CANDIDATES_EXTRA, candidate_policies, width
from stamen.server.off_policy_rounds import OFF_POLICY
from stamen.server.off_policy_stats import off_policy_estimates
from stamen.server.releases import ReleaseWriter
from stamen.simulation.engines.flower import initial_shared
from stamen.simulation.protocol.split import leave_one_out

pytestmark = pytest.mark.slow

N_USERS, N_ITEMS = 4, 120
SHOWN_AT = 1_700_000_000.0
CANDIDATES = [
    {"name": "explore-more", "overrides": {"explore": 0.6}, "max_weight": 3.0},
    {"name": "greedy", "overrides": {"explore": 0.0}, "max_weight": 2.0},
]
WEIGHTS = candidate_policies({CANDIDATES_EXTRA: CANDIDATES})
MAX_SLOTS = 8
SETTINGS = {
    "every": 1,
    "start": SHOWN_AT - 3600.0,
    "now": SHOWN_AT + 7200.0,
    "off_policy_max_slots": MAX_SLOTS,
}


def _split():  # noqa: ANN202
    rng = np.random.default_rng(11)
    items = [rng.choice(N_ITEMS, size=8, replace=False) for _ in range(N_USERS)]
    times = [sorted(rng.uniform(0, 10_000, 8).tolist()) for _ in range(N_USERS)]
    return leave_one_out(timed_population(items, times, N_ITEMS), seed=0)


def _prepare(config, clear: dict[int, np.ndarray]):  # noqa: ANN001, ANN202
    """Publish release 1 with the candidates and install it on every device; each shows two
    lists of 5 with exploration 0.4 (logged), and its person engages with one item of each;
    keep each device's own contribution, computed as its ClientApp will (in the clear)."""

    def prepare(writer: ReleaseWriter, devices: VirtualDevices) -> None:
        writer.extras = {CANDIDATES_EXTRA: CANDIDATES}
        release = writer.publish(1, initial_shared(N_ITEMS, config, writer.catalog))
        for row in range(N_USERS):
            with devices.open(row, pipeline=PipelineSettings(explore=0.4)) as device:
                device.apply_release(release)
                for k in range(2):
                    at = SHOWN_AT + 600.0 * k
                    shown = device.recommend(5, at=at)
                    device.log_shown(shown, at=at)
                    device.record(shown[(row + k) % 5].item, "view", at=at + 60.0)
            with devices.open(row) as device:  # as the ClientApp opens it
                vector = device.off_policy_contribution(
                    list(WEIGHTS),
                    max_weights=list(WEIGHTS.values()),
                    start=SETTINGS["start"],
                    end=SETTINGS["now"],
                    max_slots=MAX_SLOTS,
                    attribution_s=MetricBounds().attribution_s,
                )
            assert vector is not None
            clear[row] = vector

    return prepare


class _Evaluating(RecordingMF):
    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.evaluate_candidates(WEIGHTS)


def _run(tmp_path: Path, *, dp: dict | None = None, audit: bool = False):  # noqa: ANN202
    config = secagg_config(
        N_USERS,
        secagg={"num_shares": 3, "reconstruction_threshold": 2},
        analytics={"experiments": {**SETTINGS, **({"dp": dp} if dp else {})}},
    )
    captured = tmp_path / "messages"
    captured.mkdir()
    clear: dict[int, np.ndarray] = {}
    strategy = run_recorded(
        _split(),
        config,
        initial=initial_shared(N_ITEMS, config),
        folder=tmp_path,
        outer_mods=[Capture(captured)] if audit else [],
        strategy=_Evaluating,
        prepare=_prepare(config, clear),
    )
    (record,) = strategy.history
    assert record.analytics is not None
    return config, strategy, record.analytics[OFF_POLICY], clear, captured


def test_an_evaluation_sends_only_masked_sums_and_reports_the_released_estimate(tmp_path) -> None:
    """SecAgg+ on, no DP: every device answers the evaluation with one masked vector of
    the layout's width and nothing else; the released sums equal the devices' own vectors
    summed in the clear, within SecAgg+'s quantisation, and the report is
    ``off_policy_estimates`` of the released sum; ε = ∞."""
    config, strategy, measured, clear, captured = _run(tmp_path, audit=True)
    size = width(len(CANDIDATES))
    assert measured.devices == measured.cohort == N_USERS and measured.failed is None

    # the audit: each device's evaluation reply is SecAgg+'s masked vector and no more
    messages = read_captured(captured)
    assert_masked_only(messages, "off-policy", devices=N_USERS, width=size)
    # no other off-policy message carries anything of the device's but SecAgg+'s keys and shares
    for m in messages:
        if task_of(m) == "off-policy":
            assert m["arrays"] in ({}, {"fitres.parameters": []})

    # the released sums are the clear sums (noise off), within SecAgg+'s quantisation
    secagg = strategy.off_policy.queries[OFF_POLICY].secagg
    level = 2 * secagg.clipping_range / secagg.quantization_range
    bound = N_USERS * level * 1.001 / query_scale(width=size, clip_norm=1.0)
    vectors = np.stack([clear[row] for row in range(N_USERS)])
    assert vectors.shape == (N_USERS, size) and vectors[:, 0].sum() > 0
    assert vectors[:, 1].sum() > 0  # something was engaged with
    total = vectors.sum(axis=0)
    released = strategy.off_policy.queries[OFF_POLICY].result.total
    assert np.abs(released - total).max() <= bound

    report = measured.report
    assert report is not None and report["privacy"]["epsilon"] is None  # ∞: no noise
    # the report is the estimate of what was released (the clear sum up to the bound above;
    # SecAgg+'s rounding moves a ratio such as SNIPS by more than a fixed tolerance)
    want = off_policy_estimates(
        released, candidates=len(WEIGHTS), max_weights=list(WEIGHTS.values()), noise_std=0.0
    )
    assert report["logging"]["value"] == pytest.approx(float(want["logging"]), abs=1e-9)
    assert report["logging"]["lower"] == pytest.approx(float(want["logging_lower"]), abs=1e-9)
    rows = {(c["candidate"], c["estimator"]): c for c in report["candidates"]}
    assert set(rows) == {(n, e) for n in WEIGHTS for e in ("ips", "snips")}
    for c, name in enumerate(WEIGHTS):
        for estimator in ("ips", "snips"):
            got = rows[(name, estimator)]
            for key, field in (("value", ""), ("upper", "_upper"), ("effect", "_effect")):
                expected = float(want[f"{estimator}{field}"][c])
                assert got[key] == pytest.approx(expected, abs=1e-9), (name, estimator, key)


def test_with_dp_the_report_carries_the_evaluations_own_epsilon(tmp_path) -> None:
    """Central DP at ε = 4 on the measurements, none on training: the evaluation's report
    and record carry its ε (at most the target) and a positive noise std; training's
    record has no privacy spent."""
    _, strategy, measured, _, _ = _run(tmp_path, dp={"mode": "central", "target_epsilon": 4.0})
    report = measured.report
    assert measured.failed is None and report is not None and measured.privacy is not None
    epsilon = report["privacy"]["epsilon"]
    assert 0 < epsilon <= 4.0 + 1e-6
    assert epsilon == pytest.approx(measured.privacy.epsilon)
    assert report["noise_std"] > 0 and measured.noise_std == pytest.approx(report["noise_std"])
    (record,) = strategy.history
    assert record.privacy is None  # training ran without DP: its ε is not this one
