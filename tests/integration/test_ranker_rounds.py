"""The ranker trained in Flower rounds: ``RankerAveraging`` on Flower's simulation engine
with SecAgg+, every device answering from the example it replays on itself; the server
gets exactly the mean of the devices' own ranker updates, each round's signed release
carries the retrieval model unchanged with that round's ranker, and the last round's
evaluation is the secure sum of the devices' own list metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.flower_rounds import RecordingMF, run_recorded, secagg_config

from stamen.models import ReleaseBundle
from stamen.models.analytics import query_scale
from stamen.models.ranker.model import (
    RANKER_METRICS,
    RankingExamples,
    list_metrics,
    ranker_updates,
)
from stamen.models.ranker.settings import RankerSettings
from stamen.models.ranker.weights import init_ranker
from stamen.privacy import open_signed
from stamen.server.ranker_strategy import RankerAveraging
from stamen.simulation.config import SimulationConfig
from stamen.simulation.datasets import generate_synthetic
from stamen.simulation.engines.flower import initial_shared
from stamen.simulation.protocol.split import leave_one_out

pytestmark = pytest.mark.slow

N_DEVICES, N_ITEMS = 8, 300


class RecordingRanker(RecordingMF, RankerAveraging):
    """``RankerAveraging`` that keeps what its ``aggregate_fit`` receives."""


def _config(**extra: object) -> SimulationConfig:
    """Two rounds of every device under SecAgg+ (5 shares), MF of dimension 4."""
    secagg = {"num_shares": 5, "reconstruction_threshold": 3}
    return secagg_config(N_DEVICES, rounds=2, secagg=secagg, **extra)


def test_ranker_rounds_average_the_devices_own_updates_under_secagg(tmp_path) -> None:
    torch.set_num_threads(1)
    split = leave_one_out(generate_synthetic(N_DEVICES, N_ITEMS, seed=3).interactions, seed=0)
    config = _config(optimizer={"name": "fedavg", "lr": 1.0})
    retrieval = initial_shared(split.n_items, config)
    ranker = RankerSettings(hidden=0, local_lr=0.5)
    start = init_ranker(ranker, config.seed)
    strategy = run_recorded(
        split,
        config,
        initial=start,
        folder=tmp_path,
        strategy=RecordingRanker,
        publish=True,
        ranker=ranker,
        retrieval=retrieval,
        release_offset=10,
    )
    assert [h.devices for h in strategy.history] == [N_DEVICES, N_DEVICES]
    # round 1: the one mean SecAgg+ reveals is the mean of each device's own update (as
    # SecAgg+ clips it), computed here from the example the device replays on itself
    results, _ = strategy.received[0]
    assert len(results) == N_DEVICES
    received = results[0]  # Flower hands the one aggregate over as every device's result
    pairs = []
    for row in range(N_DEVICES):
        with strategy.devices.open(row) as device:
            example = device.ranking_example()
        empty = (np.zeros((0, start[0].size), np.float32), np.zeros(0, bool))
        pairs.append(example if example is not None else empty)
    own = []
    for pair in pairs:
        deltas, _ = ranker_updates(start, RankingExamples.stack([pair]), ranker)
        own.append([d[0] for d in deltas])
    assert sum(1 for u in own if np.abs(u[0]).max() > 1e-6) >= N_DEVICES // 2
    step = strategy.plan.secagg.quantization_step()
    bound = strategy.plan.secagg.value_range()  # SecAgg+ clips every value into its range
    assert any(np.abs(u[0]).max() > bound for u in own)  # so this test sees it do so
    for i, got in enumerate(received):
        want = np.mean([np.clip(u[i].astype(np.float64), -bound, bound) for u in own], axis=0)
        bad = np.flatnonzero(np.abs(got - want) > step)
        assert not len(bad), (i, bad, got[bad], want[bad])
    # each round's release: the retrieval arrays as they were, that round's ranker
    bundle = ReleaseBundle.decode(
        open_signed(
            (tmp_path / "releases" / "release-000012.stamen").read_bytes(),
            public_key=(tmp_path / "releases" / "release.pub").read_bytes(),
        )
    )
    assert bundle.release == 12 and bundle.ranker is not None
    for a, b in zip(bundle.shared_arrays(), retrieval, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(bundle.ranker, strategy.server.arrays(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(bundle.ranker[0], start[0])  # it learned something
    # the last round's evaluation: the secure sum of each device's metrics on its own
    # list under the final ranker, within SecAgg+'s quantisation (one level per device
    # and entry), and no round before it evaluated (eval_every 0: the last round only)
    assert strategy.history[0].evaluate is None
    evaluation = strategy.history[-1].evaluate
    values, took = list_metrics(strategy.server.arrays(), RankingExamples.stack(pairs))
    assert evaluation.secure and evaluation.devices == int(took.sum()) > 0
    assert strategy.evaluation_query is not None and strategy.evaluation_query.secagg is not None
    level = strategy.evaluation_query.secagg.quantization_step()
    scale = query_scale(width=len(RANKER_METRICS) + 1, clip_norm=1.0)
    bound = N_DEVICES * level * 1.001 / scale / int(took.sum())
    for i, name in enumerate(RANKER_METRICS):
        assert abs(evaluation.metrics[name] - values[took, i].mean()) <= bound, name
    assert not any(name in evaluation.metrics for name in ("hr@10", "ndcg@10", "loss"))


def test_a_simulation_trains_the_ranker_after_the_model_on_the_same_devices(tmp_path) -> None:
    """``[ranker] rounds``: the run's ServerApp trains the retrieval model, every device
    installs its last release, then the ranker's rounds follow through SecAgg+ and DP,
    with their own ε; the last release holds the trained model and the trained ranker."""
    from stamen.simulation.engines.flower import run_federated

    torch.set_num_threads(1)
    split = leave_one_out(generate_synthetic(N_DEVICES, N_ITEMS, seed=4).interactions, seed=0)
    config = _config(
        output=str(tmp_path),
        dp={"mode": "central", "target_epsilon": 8.0, "clip_norm": 1.0},
        ranker={"rounds": 2, "hidden": 0, "local_lr": 0.5},
    )
    result = run_federated(config, split, output=tmp_path)
    assert result.ranker is not None, result.errors[-4:]
    history = result.ranker["history"]
    assert [h.round for h in history] == [1, 2]
    assert [h.release for h in history] == ["release-000003.stamen", "release-000004.stamen"]
    # Poisson cohorts under DP: the ranker's rounds had devices, and their ε is its own
    assert all(h.devices == h.cohort > 0 for h in history), history
    assert 0 < result.ranker["privacy"]["epsilon"] <= 8.0 + 1e-6
    assert 0 < result.privacy["epsilon"] <= 8.0 + 1e-6
    evaluation = history[-1].evaluate
    assert evaluation.secure and evaluation.answered == N_DEVICES, evaluation
    metrics = evaluation.metrics
    assert evaluation.devices > 0 and all(0 <= metrics[m] <= 1 for m in RANKER_METRICS)
    bundle = ReleaseBundle.decode(
        open_signed(
            (tmp_path / "releases" / "release-000004.stamen").read_bytes(),
            public_key=(tmp_path / "releases" / "release.pub").read_bytes(),
        )
    )
    for a, b in zip(bundle.shared_arrays(), result.shared, strict=True):
        np.testing.assert_array_equal(a, b)
    assert bundle.ranker is not None
    for a, b in zip(bundle.ranker, result.ranker["weights"], strict=True):
        np.testing.assert_array_equal(a, b)
