"""Private ALS on Flower's simulation engine: the federated path computes what the
simulation computes, and runs under SecAgg+ with central noise within its ε (the
strategy driven directly: ``tests/server/test_als_strategy.py``)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.private_als import ALS, als_config

from stamen.models.als.layout import ALSLayout
from stamen.simulation.baselines.private_als import run_private_als
from stamen.simulation.datasets import generate_synthetic
from stamen.simulation.engines.flower import run_federated
from stamen.simulation.protocol.split import leave_one_out

pytestmark = pytest.mark.slow

USERS, ITEMS = 10, 300


@pytest.fixture(scope="module")
def split():
    return leave_one_out(generate_synthetic(USERS, ITEMS, seed=0).interactions, seed=0)


def test_flower_private_als_equals_the_simulation_without_noise(split, tmp_path) -> None:
    config = als_config(tmp_path, secagg={"enabled": False})
    result = run_federated(config, split, output=tmp_path)
    assert [h.round for h in result.history] == [1, 2, 3]
    assert [h.stage for h in result.history] == ["counts", "statistics", "statistics"]
    assert all(h.devices == USERS and h.failures == 0 for h in result.history)
    simulated = run_private_als(
        split.train, config.als, epsilon=float("inf"), delta=1 / USERS, seed=config.seed
    )
    items, bias = result.shared
    np.testing.assert_allclose(items, simulated.items, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bias, simulated.bias, rtol=1e-4, atol=1e-6)
    assert np.abs(items).max() > 0.01  # the item side was solved, not left at its start
    evaluation = result.history[-1].evaluate
    assert evaluation is not None and set(evaluation.metrics) >= {"ndcg@10", "hr@10"}


def test_private_als_under_secagg_and_central_noise_spends_its_epsilon(split, tmp_path) -> None:
    config = als_config(
        tmp_path,
        secagg={
            "enabled": True,
            "num_shares": 3,
            "reconstruction_threshold": 2,
            "clipping_range": 2.5,
        },
        dp={"mode": "central", "target_epsilon": 8.0},
    )
    result = run_federated(config, split, output=tmp_path)
    assert all(h.devices == USERS and h.failures == 0 for h in result.history)
    layout = ALSLayout(dim=ALS["dim"], head=np.arange(ALS["head"]), item_grams=False)
    sizes = [h.upload_bytes_per_device for h in result.history]
    assert sizes == [8 * ITEMS, 8 * layout.size, 8 * layout.size]  # SecAgg+ sends int64
    privacy = result.privacy
    assert privacy is not None and privacy["rounds"] == 3 and privacy["sampling_rate"] == 1.0
    assert 7.5 < privacy["epsilon"] <= 8.0 and privacy["delta"] == pytest.approx(1 / USERS)
    epsilons = [h.privacy.epsilon for h in result.history if h.privacy is not None]
    assert len(epsilons) == 3 and epsilons == sorted(epsilons)
    assert np.isfinite(result.shared[0]).all() and np.abs(result.shared[0]).max() > 0
