"""An A/B experiment's measurement round on Flower's simulation engine: devices that serve
their arms of a release's experiment, log what they showed and what followed, and answer
the measurement under SecAgg+. What each device sends is audited (an outermost ClientApp
mod sees exactly what leaves it), and the server's report is checked against the devices'
own contributions summed in the clear (the pieces on hand-built cases:
``tests/server/test_experiment_rounds.py``)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.capture import Capture, assert_masked_only, read_captured
from helpers.flower_rounds import RecordingMF, run_recorded, secagg_config
from helpers.populations import timed_population

from stamen.client.flower.virtual import VirtualDevices
from stamen.models.analytics import query_scale
from stamen.models.experiments import (
    COVARIATE_STATISTICS,
    EXPERIMENTS_EXTRA,
    METRICS,
    STATISTICS,
    sensitivity,
)
from stamen.server.experiment_rounds import query_name
from stamen.server.releases import ReleaseWriter
from stamen.simulation.engines.flower import initial_shared
from stamen.simulation.protocol.split import leave_one_out

pytestmark = pytest.mark.slow

N_USERS, N_ITEMS = 6, 150
SHOWN_AT = 1_700_000_000.0
EXPERIMENT = {
    "id": "explore-test",
    "salt": "s1",
    "arms": [{"name": "control"}, {"name": "explore", "overrides": {"explore": 0.5}}],
}
ARMS = ("control", "explore")
WINDOW = {"every": 1, "start": SHOWN_AT - 3600.0, "now": SHOWN_AT + 7200.0}


def _split():
    rng = np.random.default_rng(5)
    items = [rng.choice(N_ITEMS, size=8, replace=False) for _ in range(N_USERS)]
    times = [sorted(rng.uniform(0, 10_000, 8).tolist()) for _ in range(N_USERS)]
    return leave_one_out(timed_population(items, times, N_ITEMS), seed=0)


def _prepare(config, clear: dict[str, np.ndarray], pre_start: float | None = None):  # noqa: ANN001, ANN202
    """Publish release 1 with the experiment, install it on every device, show each person
    a list and record what followed (with ``pre_start``, also a list two hours before the
    window, viewed by every other person); keep each device's own contribution (in the
    clear)."""

    def prepare(writer: ReleaseWriter, devices: VirtualDevices) -> None:
        writer.extras = {EXPERIMENTS_EXTRA: [EXPERIMENT]}
        release = writer.publish(1, initial_shared(N_ITEMS, config, writer.catalog))
        for row in range(N_USERS):
            with devices.open(row) as device:
                device.apply_release(release)
                if pre_start is not None:
                    before = device.recommend(5, at=WINDOW["start"] - 7200.0)
                    device.log_shown(before, at=WINDOW["start"] - 7200.0)
                    if row % 2:
                        device.record(before[1].item, "view", at=WINDOW["start"] - 7000.0)
                shown = device.recommend(5, at=SHOWN_AT)
                device.log_shown(shown, at=SHOWN_AT)
                kind = "view" if row % 2 == 0 else "not_interested"
                device.record(shown[0].item, kind, at=SHOWN_AT + 60.0)
                clear[str(row)] = device.experiment_contribution(
                    EXPERIMENT["id"], start=WINDOW["start"], end=WINDOW["now"], pre_start=pre_start
                )
                clear[f"arm-{row}"] = np.array(ARMS.index(device.experiment_arms()["explore-test"]))

    return prepare


class _Measuring(RecordingMF):
    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.measure_experiments({EXPERIMENT["id"]: ARMS})


def test_a_measurement_sends_only_masked_sums_and_reports_the_clear_sums(tmp_path) -> None:
    """SecAgg+ on, no DP: every device answers the measurement with one masked vector of
    the experiment's width (arms × statistics) and nothing else; the released per-arm
    sums equal the devices' own contributions summed in the clear, to within SecAgg+'s
    quantisation; the report names both arms, every metric, and ε = ∞."""
    split = _split()
    config = secagg_config(
        N_USERS,
        secagg={"num_shares": 3, "reconstruction_threshold": 2},
        analytics={"experiments": WINDOW},
    )
    captured = tmp_path / "messages"
    captured.mkdir()
    clear: dict[str, np.ndarray] = {}
    strategy = run_recorded(
        split,
        config,
        initial=initial_shared(N_ITEMS, config),
        folder=tmp_path,
        outer_mods=[Capture(captured)],
        strategy=_Measuring,
        prepare=_prepare(config, clear),
    )
    (record,) = strategy.history
    measured = record.analytics[query_name(EXPERIMENT["id"])]
    assert measured.devices == measured.cohort == N_USERS and measured.failed is None
    width = len(ARMS) * len(STATISTICS)

    # the audit: each device's measurement reply is SecAgg+'s masked vector and no more
    assert_masked_only(read_captured(captured), "experiment", devices=N_USERS, width=width)

    # the released sums are the clear sums (noise off), within SecAgg+'s quantisation
    # the query's range: its clip norm (no noise shares), as PrivateSum sets it
    secagg = config.secagg.resolved(config.analytics.experiments.dp.clip_norm)
    level = 2 * secagg.value_range() / secagg.quantization_range
    scale = query_scale(width=len(STATISTICS), clip_norm=1.0)
    bound = N_USERS * level * 1.001 / scale
    contributions = np.stack([clear[str(row)] for row in range(N_USERS)])
    assert contributions.shape == (N_USERS, width)
    assert contributions[:, 0 :: len(STATISTICS)].sum() == N_USERS  # everyone was exposed
    report = measured.report
    assert report is not None and report["privacy"]["epsilon"] is None  # ∞: no noise
    sums = contributions.sum(axis=0).reshape(len(ARMS), len(STATISTICS))
    for a, arm in enumerate(report["arms"]):
        assert arm["name"] == ARMS[a]
        assert abs(arm["exposed"] - sums[a, 0]) <= bound
        assert sums[a, 0] == sum(clear[f"arm-{row}"] == a for row in range(N_USERS))
    assert {(e["arm"], e["metric"]) for e in report["effects"]} == {("explore", m) for m in METRICS}


def test_a_measurement_with_covariates_releases_the_devices_covariate_sums(tmp_path) -> None:
    """``pre_period_days``: each device answers with the covariate layout over the
    pre-period the request names, the query scaled for its sensitivity sqrt(1 + 5M); the
    released sums equal the devices' own covariate contributions summed in the clear, within
    SecAgg+'s quantisation, and the report carries the CUPED figures of both arms."""
    settings = {**WINDOW, "pre_period_days": 1.0}
    pre_start = WINDOW["start"] - 86_400.0
    config = secagg_config(
        N_USERS,
        secagg={"num_shares": 3, "reconstruction_threshold": 2},
        analytics={"experiments": settings},
    )
    clear: dict[str, np.ndarray] = {}
    strategy = run_recorded(
        _split(),
        config,
        initial=initial_shared(N_ITEMS, config),
        folder=tmp_path,
        strategy=_Measuring,
        prepare=_prepare(config, clear, pre_start=pre_start),
    )
    (record,) = strategy.history
    measured = record.analytics[query_name(EXPERIMENT["id"])]
    assert measured.devices == N_USERS and measured.failed is None
    block = len(COVARIATE_STATISTICS)
    contributions = np.stack([clear[str(row)] for row in range(N_USERS)])
    assert contributions.shape == (N_USERS, len(ARMS) * block)
    # every other person viewed an item of the pre-period's list: their engagement
    # covariate x (the third of the metric's five columns after the count) is positive
    blocks = contributions.reshape(N_USERS, len(ARMS), block).sum(axis=1)
    assert (blocks[1::2, 1 + 5 * METRICS.index("engagement") + 2] > 0).all()
    query = strategy.experiments.queries[EXPERIMENT["id"]]
    assert query.scale == pytest.approx(1.0 / sensitivity(covariates=True))
    secagg = query.secagg
    level = 2 * secagg.clipping_range / secagg.quantization_range
    bound = N_USERS * level * 1.001 / query.scale
    assert np.abs(query.result.total - contributions.sum(axis=0)).max() <= bound
    report = measured.report
    assert report is not None and [a["name"] for a in report["cuped"]["arms"]] == list(ARMS)
    assert {(e["arm"], e["metric"]) for e in report["cuped"]["effects"]} == {
        ("explore", m) for m in METRICS
    }
