"""Off-policy evaluation on Flower's deployment runtime over 127.0.0.1: a TLS SuperLink with
SuperNode authentication, three SuperNodes each holding its own encrypted device, a release
carrying two candidate policies (``stamen experiment candidates``) that no device serves,
devices that logged what they showed (with exploration) and what followed, and the
deployment app run with ``flwr run``: its round evaluates the candidates under SecAgg+, and
with the measurement's noise off the report is the estimate from the devices' own vectors
summed in the clear (on Flower's simulation engine, with its message audit and with DP:
``tests/integration/test_off_policy_rounds.py``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import ok
from helpers.deployment_runs import release_init, seed_devices
from helpers.loopback_runs import finish_run, secure_federation, start_run

from stamen.client.device.device import Device
from stamen.client.pipeline.recommend import PipelineSettings
from stamen.models.analytics import query_scale
from stamen.models.experiments import MetricBounds
from stamen.models.off_policy import width
from stamen.privacy import SecAggSettings
from stamen.server.certs import make_certificates
from stamen.server.off_policy_rounds import OFF_POLICY
from stamen.server.off_policy_stats import off_policy_estimates

pytestmark = pytest.mark.slow

NODES = 3
CANDIDATES = [
    {"name": "explore-more", "overrides": {"explore": 0.6}, "max_weight": 3.0},
    {"name": "greedy", "overrides": {"explore": 0.0}, "max_weight": 2.0},
]
NAMES = [c["name"] for c in CANDIDATES]
WEIGHTS = [c["max_weight"] for c in CANDIDATES]
MAX_SLOTS = 8


def _log_lists(tmp_path: Path, now: float) -> None:
    """Each device shows two lists of 5 with exploration 0.4 (logged with their
    propensities) and its person views one item of each."""
    for d in range(NODES):
        key = (tmp_path / f"device-{d}.key").read_bytes()
        pipeline = PipelineSettings(explore=0.4)
        with Device.open(tmp_path / f"device-{d}", key=key, pipeline=pipeline, seed=d) as device:
            for k in range(2):
                at = now + 60.0 * k
                shown = device.recommend(5, at=at)
                device.log_shown(shown, at=at)
                device.record(shown[(d + k) % 5].item, "view", at=at + 10.0)


def _clear_vectors(tmp_path: Path, start: float, end: float) -> np.ndarray:
    """Each device's contribution, computed as its ClientApp will (in the clear)."""
    vectors = []
    for d in range(NODES):
        key = (tmp_path / f"device-{d}.key").read_bytes()
        with Device.open(tmp_path / f"device-{d}", key=key) as device:
            vectors.append(
                device.off_policy_contribution(
                    NAMES,
                    max_weights=WEIGHTS,
                    start=start,
                    end=end,
                    max_slots=MAX_SLOTS,
                    attribution_s=MetricBounds().attribution_s,
                )
            )
    assert all(v is not None for v in vectors)
    return np.stack(vectors)


def _ratio_slack(factor: float, num: float, den: float, delta: float) -> float:
    """The most ``factor · A / B`` moves when ``A`` and ``B`` (clear values ``num``,
    ``den > delta``) each move by at most ``delta``."""
    assert den > delta
    return factor * delta * (den + abs(num)) / (den * (den - delta))


def test_an_off_policy_round_on_the_loopback_superlink_reports_the_clear_estimate(
    tmp_path,
) -> None:
    """The release carries the candidates; one deployment round trains (central DP at
    ε = 8) and evaluates them with every device answering under SecAgg+, the measurement's
    noise off: its ε is reported as ∞ (no noise; training's ε is its own), and each
    estimate equals ``off_policy_estimates`` of the devices' clear sum, to within what
    SecAgg+'s quantisation of each summed entry can move it."""
    certs = make_certificates(tmp_path / "certs", supernodes=NODES)
    releases, key = release_init(tmp_path, dim=8)
    definition = tmp_path / "candidates.json"
    definition.write_text(json.dumps({"candidates": CANDIDATES}))
    publish = ["--releases", str(releases), "--signing-key", str(key)]
    assert "release 1" in ok(["experiment", "candidates", str(definition), *publish])
    seed_devices(tmp_path, key, NODES)
    now = time.time()
    start, end = now - 3600.0, now + 3600.0
    _log_lists(tmp_path, now)
    clear = _clear_vectors(tmp_path, start, end)
    size = width(len(CANDIDATES))
    assert clear.shape == (NODES, size) and clear[:, 1].sum() > 0  # something was engaged with

    checkpoints = tmp_path / "checkpoints"
    config = {
        "releases": f"'{releases}'",
        "checkpoints": f"'{checkpoints}'",
        "signing-key": f"'{key}'",
        "population": NODES,
        "num-server-rounds": 1,
        "dp": "'central'",
        "dp-epsilon": 8.0,
        "dp-clip-norm": 0.5,
        "experiment-every": 1,
        "experiment-start": start,
        "experiment-now": end,
        "experiment-off-policy-max-slots": MAX_SLOTS,
    }
    with secure_federation(tmp_path, certs, NODES) as federation:
        run = start_run(tmp_path, federation, config)
        rounds = finish_run(run, checkpoints, 1)
    assert [r["round"] for r in rounds] == [1], run.failure()
    (record,) = rounds
    assert record["devices"] == NODES and 0 < record["privacy"]["epsilon"] <= 8.0 + 1e-6
    measured = record["analytics"][OFF_POLICY]
    assert measured["devices"] == measured["cohort"] == NODES and "failed" not in measured
    report = measured["report"]
    assert report["privacy"]["epsilon"] is None and report["noise_std"] == 0.0  # ∞: no noise

    # each released sum is within N quantisation levels of the clear sum (the query's
    # SecAgg+ range: its clip norm, 1, with no noise shares) plus the float32 rounding of
    # the scaled sums (each at most N), in the sums' units
    total = clear.sum(axis=0)
    level = 2 * 1.0 / SecAggSettings().quantization_range
    rounding = float(np.finfo(np.float32).eps) * NODES
    delta = (NODES * level + rounding) / query_scale(width=size, clip_norm=1.0)
    want = off_policy_estimates(total, candidates=len(NAMES), max_weights=WEIGHTS, noise_std=0.0)
    t_n, t_g = total[0], total[1]
    logging_slack = _ratio_slack(1.0, t_g, t_n, delta)
    assert abs(report["logging"]["value"] - float(want["logging"])) <= logging_slack
    rows = {(c["candidate"], c["estimator"]): c for c in report["candidates"]}
    assert set(rows) == {(n, e) for n in NAMES for e in ("ips", "snips")}
    for c, name in enumerate(NAMES):
        t_a, t_b = total[2 + 2 * c], total[3 + 2 * c]
        slacks = {
            "ips": _ratio_slack(WEIGHTS[c], t_a, t_n, delta),
            "snips": _ratio_slack(1.0, t_a, t_b, delta),
        }
        for estimator, slack in slacks.items():
            got = rows[(name, estimator)]
            value = float(want[estimator][c])
            effect = float(want[f"{estimator}_effect"][c])
            assert abs(got["value"] - value) <= slack, (name, estimator)
            assert abs(got["effect"] - effect) <= slack + logging_slack, (name, estimator)

    out = ok(["experiment", "report", str(checkpoints), "--off-policy"])
    assert "off-policy evaluation, round 1" in out and "no noise" in out
    assert all(name in out for name in NAMES)
