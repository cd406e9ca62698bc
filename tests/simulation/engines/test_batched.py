"""The batched simulation replays the devices' and server's arithmetic exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.common.secure_aggregation.quantization import quantize

from stamen.models.mf.local import local_update
from stamen.models.mf.model import MFModel
from stamen.privacy import PrivacyAccountant, SecAggSettings, UserDP, clip_update, update_norm
from stamen.server.rounds import RoundPlan
from stamen.simulation.config import load_config
from stamen.simulation.datasets import generate_synthetic
from stamen.simulation.engines.batched import (
    cohort_updates,
    fast_round_mean,
    model_step,
    round_mean,
    run_batched,
    secagg_mean,
)
from stamen.simulation.engines.flower import initial_shared, release_catalog_of
from stamen.simulation.protocol.split import leave_one_out

N_USERS, N_ITEMS, DIM = 60, 400, 8


@pytest.fixture(scope="module")
def split():
    return leave_one_out(generate_synthetic(N_USERS, N_ITEMS, seed=3).interactions, seed=0)


def _model(settings) -> MFModel:
    return MFModel(settings.local, release_catalog_of(N_ITEMS))


def device_deltas(shared, data, settings):
    users = np.arange(data.n_users)
    return cohort_updates(_model(settings), shared, data, users, seed=0, rnd=1)


def _settings(split, **overrides):
    config = load_config(None, {"local": {"dim": DIM}, "clients_per_round": 10, **overrides})
    return config, config.server_settings(split.n_users)


@pytest.mark.parametrize("weighting", ["uniform", "positives"])
def test_device_deltas_equal_local_update_for_every_device(split, weighting) -> None:
    config, settings = _settings(split, local={"dim": DIM, "update_weighting": weighting})
    shared = initial_shared(split.n_items, config)
    shared = [a + np.float32(0.05) for a in shared]  # away from the symmetric start
    users = np.arange(12)
    d_w, d_b = device_deltas(shared, split.train.select(users), settings)
    for u in users:
        expected = local_update(
            shared,
            None,
            items=split.train.row(u),
            settings=settings.local,
            rng=np.random.default_rng(u),
        ).delta
        scale = float(np.abs(expected[0]).max())
        np.testing.assert_allclose(d_w[u].numpy(), expected[0], atol=1e-5 * scale + 1e-9)
        np.testing.assert_allclose(d_b[u].numpy(), expected[1], atol=1e-5 * scale + 1e-9)


def test_device_deltas_refuse_settings_they_do_not_replay(split) -> None:
    _, settings = _settings(split, local={"dim": DIM, "loss": "bpr"})
    with pytest.raises(ValueError, match="ials"):
        run_batched(split, settings, initial=initial_shared(split.n_items, load_config()))


def test_secagg_mean_is_flowers_reconstruction_of_the_mean() -> None:
    secagg = SecAggSettings(clipping_range=1.0)
    rng = np.random.default_rng(0)
    updates = rng.normal(0, 0.05, size=(7, 30)).astype(np.float32)
    (quantised,) = quantize([updates], secagg.value_range(), secagg.quantization_range)
    (mean,) = secagg_mean([quantised.astype(np.int64).sum(0)], 7, secagg)
    assert np.abs(mean - updates.mean(0)).max() <= secagg.quantization_step()
    assert np.abs(mean - updates.mean(0)).max() > 0  # quantised, not the float mean


def test_round_mean_clips_every_device_and_adds_calibrated_noise(split) -> None:
    clip = 0.01
    config, settings = _settings(
        split, dp={"mode": "central", "noise_multiplier": 0.0, "clip_norm": clip}
    )
    shared = initial_shared(split.n_items, config)
    data = split.train.select(np.arange(10))
    d_w, d_b = device_deltas(shared, data, settings)
    clipped = [
        clip_update([w.numpy(), b.numpy()], max_norm=clip)[0] for w, b in zip(d_w, d_b, strict=True)
    ]
    assert min(update_norm([w.numpy(), b.numpy()]) for w, b in zip(d_w, d_b, strict=True)) > clip
    expected = [np.mean([c[i] for c in clipped], axis=0) for i in range(2)]
    mean = round_mean(
        model_step(_model(settings), data, np.arange(data.n_users), seed=settings.seed),
        shared,
        np.arange(data.n_users),
        RoundPlan(settings, population=split.n_users),
        1,
    )
    # SecAgg+ is on by default, its range the clip norm
    step = RoundPlan(settings, population=split.n_users).secagg.quantization_step()
    for got, want in zip(mean, expected, strict=True):
        assert np.abs(got - want).max() <= step

    noisy_config, noisy = _settings(
        split, dp={"mode": "distributed", "noise_multiplier": 2.0, "clip_norm": clip}
    )
    users = np.arange(data.n_users)
    step = model_step(_model(noisy), data, users, seed=noisy.seed)
    mean = round_mean(step, shared, users, RoundPlan(noisy, population=split.n_users), 1)
    noise = np.concatenate([(g - w).ravel() for g, w in zip(mean, expected, strict=True)])
    assert noise.std() == pytest.approx(2.0 * clip / 10, rel=0.05)


def test_run_trains_accounts_and_reports(split) -> None:
    config, settings = _settings(
        split,
        rounds=6,
        eval_every=3,
        dp={"mode": "central", "target_epsilon": 50.0, "clip_norm": 1.0},
    )
    torch.manual_seed(0)
    seen: list[int] = []
    result = run_batched(
        split,
        settings,
        initial=initial_shared(split.n_items, config),
        on_round=lambda r: seen.append(r.round),
    )
    assert seen == [1, 2, 3, 4, 5, 6]
    evaluated = [h for h in result.history if h.evaluate is not None]
    assert [h.round for h in evaluated] == [3, 6]
    last = evaluated[-1].evaluate
    assert last is not None and last.devices == len(split.evaluated)
    assert {"ndcg@10", "valid_ndcg@10", "sampled_hr@10"} <= set(last.metrics)
    assert result.privacy is not None and result.privacy["rounds"] == 6
    dp = UserDP(mode="central", target_epsilon=50.0, clip_norm=1.0).resolve(
        population=split.n_users, cohort=10, rounds=6
    )
    assert result.privacy["epsilon"] == pytest.approx(PrivacyAccountant(dp, rounds=6).epsilon)
    assert result.privacy["epsilon"] <= 50.0
    start = initial_shared(split.n_items, config)
    assert not np.allclose(result.shared[0], start[0])


@pytest.mark.parametrize("mode", ["off", "central"])
def test_fast_round_mean_equals_the_exact_one(split, mode) -> None:
    dp = {"mode": mode, "noise_multiplier": 0.0, "clip_norm": 0.05} if mode != "off" else {}
    config, settings = _settings(split, dp=dp or {"mode": "off"})
    shared = [a + np.float32(0.03) for a in initial_shared(split.n_items, config)]
    data = split.train.select(np.arange(3, 40))

    def plan() -> RoundPlan:  # the cohort is the expected one: the mean is not rescaled
        cohort = settings.model_copy(update={"clients_per_round": data.n_users})
        return RoundPlan(cohort, population=split.n_users)

    users = np.arange(data.n_users)
    step = model_step(_model(settings), data, users, seed=settings.seed)
    exact = round_mean(step, shared, users, plan(), 1)
    fast = fast_round_mean(_model(settings), shared, data, plan(), 1)
    assert fast is not None
    step = plan().secagg.quantization_step()
    for e, f in zip(exact, fast, strict=True):
        assert np.abs(e - f).max() <= step + 1e-7 * np.abs(e).max()


def test_fast_round_mean_defers_to_the_exact_path_near_the_clipping_range(split) -> None:
    config, settings = _settings(split, secagg={"clipping_range": 1e-4})
    data = split.train.select(np.arange(10))
    shared = initial_shared(split.n_items, config)
    plan = RoundPlan(settings, population=split.n_users)
    assert fast_round_mean(_model(settings), shared, data, plan, 1) is None
