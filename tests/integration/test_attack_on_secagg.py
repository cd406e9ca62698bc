"""The item-set inference attack on what the server receives from Flower's SecAgg+: the
cohort's mean and nothing else, on which the attack does no better than the items' public
popularity (the attack itself, on individual updates and under DP noise:
``tests/simulation/protocol/test_attack.py``). The population is 20 seeded real
MovieLens-100K users (read from $STAMEN_DATA_DIR or ../shared/data; skipped when absent).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.flower_rounds import own_updates, run_recorded, secagg_config
from helpers.paths import real_data

from stamen.simulation.datasets import load_dataset
from stamen.simulation.engines.flower import initial_shared
from stamen.simulation.protocol import attack as atk
from stamen.simulation.protocol.split import leave_one_out

pytestmark = pytest.mark.slow


def _precision(view: list[np.ndarray], truth: np.ndarray, method: str) -> np.ndarray:
    guess = atk.guess_items(atk.item_scores(view, method=method), k=truth.sum(1))
    return atk.batch_attack_metrics(guess, truth)["precision"]


N_DEVICES = 20


def test_secagg_server_sees_only_the_mean_and_the_attack_fails_on_it(tmp_path) -> None:
    torch.set_num_threads(1)
    full = leave_one_out(load_dataset("ml-100k", real_data("ml-100k")).interactions, seed=0)
    users = np.sort(np.random.default_rng(2).choice(full.n_users, N_DEVICES, replace=False))
    split = full.select(users)
    config = secagg_config(N_DEVICES)
    initial = initial_shared(split.n_items, config)
    strategy = run_recorded(split, config, initial=initial, folder=tmp_path)
    assert len(strategy.received) == 1, "aggregate_fit did not run exactly once"
    received, failures = strategy.received[0]
    assert failures == 0
    assert len(received) == N_DEVICES
    view = received[0]
    for other in received[1:]:  # Flower hands every FitRes the same aggregate
        assert all(np.array_equal(a, b) for a, b in zip(view, other, strict=True))

    individual = own_updates(initial, split, config)
    secagg = strategy.plan.secagg  # the clipping range the run used (1 without DP)
    assert max(float(np.abs(a).max()) for d in individual for a in d) < secagg.clipping_range
    step = secagg.quantization_step()
    for i, received_array in enumerate(view):
        mean = np.mean([d[i].astype(np.float64) for d in individual], axis=0)
        # (i) the plain mean, up to SecAgg+'s stochastic quantisation (< one level each);
        # measured 1.6e-7 against a step of 4.8e-7
        assert np.abs(received_array - mean).max() <= step
        assert all(np.abs(received_array - d[i]).max() > 100 * step for d in individual)

    # (ii) the attack on what the server got, for each member. Chance level: the k items
    # most popular among all other ML-100K users (the attacker's public prior).
    truth = atk.truth_mask(split.train, np.arange(N_DEVICES))
    k = truth.sum(1)
    stacked = [np.repeat(a[None], N_DEVICES, axis=0) for a in view]
    on_mean = _precision(stacked, truth, "bias")
    on_own = _precision([np.stack([d[i] for d in individual]) for i in range(2)], truth, "bias")
    popular = atk.guess_items(atk.popularity_scores(full.train, users), k=k)
    popularity = atk.batch_attack_metrics(popular, truth)["precision"]
    # measured: 1.0 on every member's own update; on the mean 0.391 against a popularity
    # level of 0.365 (worst member +0.128)
    assert on_own.min() >= 0.95
    assert (on_mean <= popularity + 0.2).all(), (on_mean - popularity).max()
    assert on_mean.mean() <= popularity.mean() + 0.07, (on_mean.mean(), popularity.mean())
