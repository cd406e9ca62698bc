"""Private federated analytics on Flower's simulation engine: trending counts and secure
evaluation equal to the plain sum and the clear path within SecAgg+'s quantisation when
the noise is off (the pieces on hand-built cases: ``tests/server/test_analytics.py``)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.populations import timed_population

from stamen.client.flower.app import DeviceClient, DeviceData
from stamen.models import Interactions
from stamen.models.analytics import query_scale
from stamen.models.wire import Request, Task
from stamen.server.analytics import EVALUATION_METRICS
from stamen.simulation.engines.flower import release_catalog_of
from stamen.simulation.protocol.device_evaluation import HeldOut, evaluate_tasks

pytestmark = pytest.mark.slow


def _population(n_users: int = 10, n_items: int = 150, seed: int = 3) -> Interactions:
    rng = np.random.default_rng(seed)
    items, times = [], []
    for _ in range(n_users):
        items.append(rng.choice(n_items, size=9, replace=False))
        times.append(sorted(rng.uniform(0, 20 * 86_400, 9).tolist()))
    return timed_population(items, times, n_items)


def test_secure_sums_equal_the_plain_sum_and_the_clear_path_when_noise_is_off(tmp_path) -> None:
    """SecAgg+ on, no DP anywhere: the trending counts in the release are the plain sum
    of the devices' vectors, and the secure evaluation the clear path's mean of the
    devices' own metrics, both to within SecAgg+'s quantisation."""
    from stamen.models.bundle import ReleaseBundle, latest_release
    from stamen.privacy import open_signed
    from stamen.simulation.config import load_config
    from stamen.simulation.engines.flower import run_federated
    from stamen.simulation.engines.trending import true_trending
    from stamen.simulation.protocol.split import leave_one_out

    split = leave_one_out(_population(), seed=0)
    cap, window_days = 3, 5.0
    config = load_config(
        None,
        {
            "rounds": 1,
            "clients_per_round": 5,
            "eval_every": 1,
            "local": {"dim": 4},
            "output": str(tmp_path),
            "secagg": {"num_shares": 3, "reconstruction_threshold": 2},
            "analytics": {"trending": {"every": 1, "window_days": window_days, "cap": cap}},
        },
    )
    result = run_federated(config, split, output=tmp_path)
    last = result.history[-1]
    n = split.n_users
    # the query's range: its clip norm (no noise shares), as PrivateSum sets it
    secagg = config.secagg.resolved(config.analytics.trending.dp.clip_norm)
    level = 2 * secagg.value_range() / secagg.quantization_range  # one quantisation step
    # each device's entries are rounded by at most one level; the sum by n levels
    bound = n * level * 1.001

    true, _ = true_trending(split, window_days=window_days, cap=cap)
    assert last.analytics is not None
    assert true.sum() > 0 and last.analytics["trending"].noise_std == 0
    bundle = ReleaseBundle.decode(
        open_signed(
            latest_release(tmp_path / "releases").read_bytes(),
            public_key=(tmp_path / "releases" / "release.pub").read_bytes(),
        )
    )
    scale = query_scale(width=cap, clip_norm=1.0)
    assert np.abs(bundle.trending - true).max() <= bound / scale

    evaluation = last.evaluate
    assert evaluation is not None
    assert evaluation.secure and evaluation.full and evaluation.answered == n
    local = config.server_settings(n).device_config()
    clear = []
    for u in range(n):
        data = DeviceData(split.train.row(u), release_catalog_of(split.n_items))
        held = HeldOut.of(split, u)
        client = DeviceClient(
            data,
            {},  # type: ignore[arg-type]
            seed=0,
            row=u,
            evaluate_tasks=evaluate_tasks(lambda row, held=held: held),
        )
        request = Request(task=Task.MODEL, round=1, settings=local)
        _, examples, metrics = client.evaluate(result.shared, request.to_config())
        if examples:
            clear.append(metrics)
    assert evaluation.devices == len(clear) > 0
    scale = query_scale(width=len(EVALUATION_METRICS) + 1, clip_norm=1.0)
    for name in EVALUATION_METRICS:
        mean = np.mean([m[name] for m in clear])
        assert abs(evaluation.metrics[name] - mean) <= bound / scale / len(clear), name
