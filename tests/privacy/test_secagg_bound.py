"""The bounds of a SecAgg+ sum against a malicious device, on Flower's own arithmetic.

A device's masked vector is a list of ring elements modulo 2^32 (its weight first); the
masks cancel in the sum, so what a device adds to the unmasked sum is whatever ring
elements it chose. These tests build the honest devices' vectors with Flower's own
``quantize`` and the server's reconstruction with Flower's ``dequantize`` and the
``SecAggPlusWorkflow``'s shift and division (flwr 1.42's ``unmask_stage``), then check
what ``check_secure_sum`` accepts and that an accepted sum stays within
``malicious_influence_bound`` of the honest devices' own sum.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_combine,
    factor_extract,
    parameters_mod,
)
from flwr.common.secure_aggregation.quantization import dequantize, quantize

from stamen.client.flower import tasks
from stamen.errors import ConfigError, UpdateBoundError
from stamen.models.registry import model_class
from stamen.models.wire import DeviceDP, Request, Task
from stamen.privacy import (
    MODULUS_RANGE,
    NOISE_TAIL,
    UNCLIPPED_RANGE,
    SecAggSettings,
    UserDP,
    honest_sum_bound,
    malicious_influence_bound,
)
from stamen.server.rounds import check_secure_sum, resolve_secagg, secagg_range
from stamen.server.settings import ServerSettings

SIZE = 2_000
C = 0.5


def _honest(update: np.ndarray, secagg: SecAggSettings) -> list[np.ndarray]:
    """An honest device's vector before masking, as ``secaggplus_mod`` builds it with
    ``max_weight = 1`` and weight 1: ``[q_ratio, quantised values]``."""
    (quantised,) = quantize([update], secagg.value_range(), secagg.quantization_range)
    return factor_combine(secagg.quantization_range, [quantised.astype(np.int64)])


def _unmasked_sum(vectors: list[list[np.ndarray]], secagg: SecAggSettings) -> np.ndarray:
    """The sum the strategy sees (``n ×`` the workflow's mean) of the devices' ring
    vectors: their sum modulo 2^32 (the masks cancel), weight extracted, dequantised,
    shifted by ``-(n - 1) r`` and divided by the summed weight, as ``unmask_stage``."""
    total = [np.sum([v[i] for v in vectors], axis=0) for i in range(2)]
    ratio, (values,) = factor_extract(parameters_mod(total, MODULUS_RANGE))
    r, q = secagg.value_range(), secagg.quantization_range
    with np.errstate(divide="ignore", invalid="ignore"):
        (mean,) = dequantize([values], r, q)
        mean = (mean - (len(vectors) - 1) * r) * (q / ratio)
    return mean * len(vectors)


def _clipped(rng: np.random.Generator, norm: float = C) -> np.ndarray:
    v = rng.normal(size=SIZE)
    return v * (norm / np.linalg.norm(v))


def _central(n: int = 4) -> tuple[ServerSettings, SecAggSettings]:
    settings = ServerSettings(
        clients_per_round=n,
        dp=UserDP(mode="central", noise_multiplier=1.0, clip_norm=C),
        secagg=SecAggSettings(num_shares=3, reconstruction_threshold=2),
    )
    return settings, resolve_secagg(settings, 1.0)


def test_the_range_follows_the_clip_norm() -> None:
    settings, secagg = _central()
    assert secagg.clipping_range == C  # no value of an update of norm C is larger
    distributed = settings.model_copy(
        update={"dp": UserDP(mode="distributed", noise_multiplier=1.0, clip_norm=C)}
    )
    # room for 7 stds of the share of half the expected cohort (4 / 2 = 2 < 3 shares)
    assert secagg_range(distributed, 1.0) == pytest.approx(C + 7 * C / math.sqrt(3))
    off = settings.model_copy(update={"dp": UserDP()})
    assert secagg_range(off, None) == 1.0  # no clip norm without DP: devices do not clip


@pytest.mark.parametrize("model", ["pfedrec", "fedrap"])
def test_a_model_with_wide_updates_gets_its_range_and_published_optimizer(model: str) -> None:
    """PFedRec and FedRAP move a coordinate by more than 1 in one device step: without DP
    an unset range is the model's ``update_range``, and a run that names no optimizer
    takes the published plain mean (FedAvg at lr 1); one that names it keeps it."""
    declared = model_class(model).update_range
    assert declared is not None and declared > UNCLIPPED_RANGE
    settings = ServerSettings(model=model, clients_per_round=8)
    assert secagg_range(settings, None) == declared
    assert resolve_secagg(settings, None).clipping_range == declared
    assert (settings.optimizer.name, settings.optimizer.lr) == ("fedavg", 1.0)
    chosen = ServerSettings(model=model, optimizer={"name": "fedadam", "lr": 0.01})
    assert (chosen.optimizer.name, chosen.optimizer.lr) == ("fedadam", 0.01)
    assert ServerSettings(model="mf").optimizer == ServerSettings().optimizer


def test_an_explicit_range_is_kept_refused_below_need_and_warned_far_above(caplog) -> None:
    settings, _ = _central()
    wide = settings.model_copy(update={"secagg": SecAggSettings(clipping_range=8.0)})
    with caplog.at_level(logging.WARNING, logger="stamen"):
        assert resolve_secagg(wide, 1.0).clipping_range == 8.0  # never substituted
    assert "secagg.clipping_range (8) is 16x" in caplog.text
    narrow = SecAggSettings(clipping_range=0.25)
    with pytest.raises(ConfigError, match=r"clipping_range \(0.25\) is below the 0.5"):
        narrow.resolved(C)
    with pytest.raises(ValueError, match="resolve the settings first"):
        SecAggSettings().quantization_step()


def test_honest_devices_sums_stay_within_the_bound_they_are_checked_against() -> None:
    _, secagg = _central()
    rng = np.random.default_rng(0)
    for n in (3, 4, 5):
        updates = [_clipped(rng) for _ in range(n)]
        # the worst case for the per-coordinate check: one device all in one place, at +r
        updates[0] = np.r_[secagg.value_range(), np.zeros(SIZE - 1)]
        total = _unmasked_sum([_honest(u, secagg) for u in updates], secagg)
        assert (
            check_secure_sum([total], devices=n, secagg=secagg, clip_norm=C, noise_std=0.0) is None
        )
        bound = honest_sum_bound(devices=n, size=SIZE, clip_norm=C, noise_std=0.0, secagg=secagg)
        assert np.linalg.norm(total) <= bound
        lone = _unmasked_sum([_honest(updates[0], secagg)] * n, secagg)  # n of them: n r
        assert lone[0] == pytest.approx(n * secagg.value_range())
        assert (
            check_secure_sum([lone], devices=n, secagg=secagg, clip_norm=C, noise_std=0.0) is None
        )


def test_distributed_noise_shares_stay_within_the_bound() -> None:
    std = 0.05  # each device's share
    secagg = SecAggSettings(clipping_range=C + 7 * std, num_shares=3, reconstruction_threshold=2)
    rng = np.random.default_rng(1)
    n = 5
    updates = [_clipped(rng) + rng.normal(0, std, SIZE) for _ in range(n)]
    total = _unmasked_sum([_honest(u, secagg) for u in updates], secagg)
    assert check_secure_sum([total], devices=n, secagg=secagg, clip_norm=C, noise_std=std) is None
    # the noise term: sqrt(n) std (sqrt(size) + t), exceeded with probability < 2.3e-11
    assert honest_sum_bound(
        devices=n, size=SIZE, clip_norm=C, noise_std=std, secagg=secagg
    ) - honest_sum_bound(
        devices=n, size=SIZE, clip_norm=C, noise_std=0.0, secagg=secagg
    ) == pytest.approx(std * math.sqrt(n) * (math.sqrt(SIZE) + NOISE_TAIL))


def _attacks(secagg: SecAggSettings) -> dict[str, list[np.ndarray]]:
    """A malicious device's ring vectors: any element, its weight included."""
    q = secagg.quantization_range
    top = np.full(SIZE, q, np.int64)  # +r in every coordinate: SecAgg+'s "range"
    return {
        "max in every coordinate": [np.array([q]), top],
        "wrap-around": [np.array([q]), np.full(SIZE, MODULUS_RANGE // 2, np.int64)],
        "just past the range": [np.array([q]), np.full(SIZE, q + q // 2, np.int64)],
        "weight zero": [np.array([0]), top],
        "weight one": [np.array([1 - (4 - 1) * q + MODULUS_RANGE]), top],  # total weight 1
        "weight doubled": [np.array([5 * q]), np.full(SIZE, q // 2, np.int64)],
        "one coordinate": [np.array([q]), np.r_[q // 2 + 2 * q, np.full(SIZE - 1, q // 2)]],
    }


@pytest.mark.parametrize("attack", sorted(_attacks(SecAggSettings(clipping_range=C))))
def test_a_malicious_devices_ring_elements_are_refused_or_bounded(attack: str) -> None:
    n = 4
    _, secagg = _central(n)
    rng = np.random.default_rng(2)
    honest = [_clipped(rng) for _ in range(n - 1)]
    vectors = [_honest(u, secagg) for u in honest] + [_attacks(secagg)[attack]]
    total = _unmasked_sum(vectors, secagg)
    reason = check_secure_sum([total], devices=n, secagg=secagg, clip_norm=C, noise_std=0.0)
    if reason is None:
        influence = float(np.linalg.norm(total - np.sum(honest, axis=0)))
        bound = malicious_influence_bound(
            devices=n, size=SIZE, clip_norm=C, noise_std=0.0, secagg=secagg
        )
        assert influence <= bound, attack
    else:
        assert "honest devices" in reason or "not finite" in reason


def _weight_sum(vectors: list[list[np.ndarray]]) -> int:
    """The unmasked weight slot: the devices' first ring elements summed modulo 2^32 (the
    masks cancel), as ``unmask_stage``'s ``factor_extract`` reads it."""
    return sum(int(v[0][0]) for v in vectors) % MODULUS_RANGE


@pytest.mark.parametrize("attack", sorted(_attacks(SecAggSettings(clipping_range=C))))
def test_a_forged_weight_fails_the_named_weight_check(attack: str) -> None:
    """The weight slot of ``n`` honest devices is ``n Q``; a device that forged its own
    fails the round by the weight check, whatever its values; one that kept it honest is
    judged by the sum's bounds alone."""
    n = 4
    _, secagg = _central(n)
    rng = np.random.default_rng(4)
    honest = [_honest(_clipped(rng), secagg) for _ in range(n - 1)]
    assert _weight_sum(honest) == secagg.honest_weight_sum(n - 1) == (n - 1) * 2**22
    bad = _attacks(secagg)[attack]
    vectors = [*honest, bad]
    total = _unmasked_sum(vectors, secagg)
    figures = {"devices": n, "secagg": secagg, "clip_norm": C, "noise_std": 0.0}
    reason = check_secure_sum([total], weight_sum=_weight_sum(vectors), **figures)
    if int(bad[0][0]) != secagg.quantization_range:  # "weight zero", "weight one", "weight doubled"
        assert attack.startswith("weight")
        assert reason is not None and reason.startswith(
            f"the unmasked weight sum is {_weight_sum(vectors)}, not the {n * 2**22} "
            f"({n} devices x weight {2**22})"
        ), reason
    else:
        assert reason == check_secure_sum([total], **figures)  # the sum's own checks


def test_a_cohort_whose_honest_sum_would_wrap_the_ring_is_refused_upfront() -> None:
    """The largest cohort is the most honest devices whose weight slots (each ``Q``, the
    largest an honest value reaches too) sum below Flower's modulus: one more and the sum
    wraps. The settings refuse a cohort above it before any round, naming the setting."""
    secagg = SecAggSettings(num_shares=3, reconstruction_threshold=2)
    limit = secagg.max_cohort()
    assert secagg.honest_weight_sum(limit) < MODULUS_RANGE <= secagg.honest_weight_sum(limit + 1)
    assert limit == 1023  # 2^32 / 2^22 devices, less the one that reaches 2^32 exactly
    ServerSettings(clients_per_round=limit, secagg=secagg)
    for name, values in (
        ("clients_per_round", {"clients_per_round": limit + 1}),
        ("eval_clients", {"eval_clients": limit + 1}),
        ("analytics.trending.clients", {"analytics": {"trending": {"clients": limit + 1}}}),
    ):
        with pytest.raises(
            ValueError,
            match=rf"{name} \({limit + 1}\) is above the {limit} devices whose SecAgg\+ sum "
            r"fits Flower's ring: .*quantization_range \(4194304\).*modulus \(4294967296\)",
        ):
            ServerSettings(secagg=secagg, **values)  # type: ignore[arg-type]
    coarser = SecAggSettings(quantization_range=2**20)  # four times the cohort
    assert coarser.max_cohort() == 4095
    ServerSettings(clients_per_round=4 * (limit + 1) - 1, secagg=coarser)
    ServerSettings(clients_per_round=limit + 1, secagg=SecAggSettings(enabled=False))


@pytest.mark.parametrize("cohort", [2, 1023, 1024, 5000, 50_000, 400_000])
def test_a_large_cohort_gets_the_finest_levels_that_fit_the_ring(cohort: int) -> None:
    levels = SecAggSettings.quantization_for(cohort)
    assert SecAggSettings(quantization_range=levels).max_cohort() >= cohort
    default = SecAggSettings().quantization_range
    assert levels == default or SecAggSettings(quantization_range=2 * levels).max_cohort() < cohort


def test_accepted_sums_keep_a_malicious_device_within_its_bound() -> None:
    """Many attacks of every size and direction: an accepted one never moves the sum
    further from the honest devices' own than ``malicious_influence_bound``, and the
    largest accepted ones come close to it (the bound is not loose by orders)."""
    n = 4
    _, secagg = _central(n)
    bound = malicious_influence_bound(
        devices=n, size=SIZE, clip_norm=C, noise_std=0.0, secagg=secagg
    )
    rng = np.random.default_rng(3)
    honest = [_clipped(rng) for _ in range(n - 1)]
    own = np.sum(honest, axis=0)
    vectors = [_honest(u, secagg) for u in honest]
    accepted = []
    for scale in np.geomspace(0.1, 40.0, 60):
        # against the honest sum (an attacker that guessed it) or in a random direction
        for direction in (-own / np.linalg.norm(own), _clipped(rng, 1.0)):
            delta = scale * C * direction
            # the ring elements that add exactly delta + r (n - 1 shift) to the sum
            r = secagg.value_range()
            ring = np.round((delta + r) * secagg.quantization_range / (2 * r))
            bad = [np.array([secagg.quantization_range]), ring.astype(np.int64) % MODULUS_RANGE]
            total = _unmasked_sum([*vectors, bad], secagg)
            if check_secure_sum([total], devices=n, secagg=secagg, clip_norm=C, noise_std=0.0):
                continue
            accepted.append(float(np.linalg.norm(total - own)))
    assert accepted and max(accepted) <= bound
    assert max(accepted) > 0.5 * bound


def test_a_device_refuses_to_send_an_update_above_its_clip_norm(monkeypatch) -> None:
    sent = [np.zeros(SIZE, np.float32)]
    request = Request(task=Task.MODEL, round=1, dp=DeviceDP(C, 0.0))
    big = [np.full(SIZE, 1.0, np.float32)]  # norm 44.7
    with pytest.raises(UpdateBoundError, match="exceeds the bound 0.5"):
        tasks.check_upload(big, sent, request)
    # distributed mode: the clipped update is checked before the noise share goes on it
    noisy = request.with_(dp=DeviceDP(C, 0.1))
    monkeypatch.setattr(tasks, "clip_update", lambda arrays, max_norm: (list(arrays), 0.0))
    with pytest.raises(UpdateBoundError, match="exceeds the bound"):
        tasks.privatise(None, big, noisy, purpose=2)  # type: ignore[arg-type]


def test_the_privacy_page_states_the_bound_at_the_default_settings() -> None:
    """docs/privacy.md's figures are these functions' at the defaults (cohorts of 64,
    C = 1) on ML-100K's MF model (1,682 items x (64 + 1) values), not typed by hand."""
    from pathlib import Path

    from stamen.privacy import DPSettings, PrivacyAccountant

    text = (Path(__file__).resolve().parents[2] / "docs" / "privacy.md").read_text()
    page = " ".join(text.split())  # lines joined
    size = 1682 * 65
    assert f"{size:,} values" in page
    wrap = 2 * 1.0 * MODULUS_RANGE / SecAggSettings().quantization_range * math.sqrt(size)
    assert f"({wrap:,.0f} in L2" in page
    for mode, prefix in (("central", "r = 1, "), ("distributed", "")):
        settings = ServerSettings(dp=UserDP(mode=mode, noise_multiplier=1.0))
        secagg = resolve_secagg(settings, 1.0)
        n = settings.clients_per_round
        share = 1.0 / math.sqrt(n) if mode == "distributed" else 0.0
        figures = {
            "clip_norm": settings.dp.clip_norm,
            "noise_std": share,
            "size": size,
            "secagg": secagg,
        }
        b = honest_sum_bound(devices=n, **figures)
        r = malicious_influence_bound(devices=n, **figures)
        if mode == "distributed":
            prefix = f"r = {secagg.value_range():.3f}, "
            assert f"σ√d ≈ {math.sqrt(size):.0f}" in page
        assert f"{prefix}B({n}) = {b:.2f} and R({n}) = {r:.2f}" in page, mode
    rate, rounds, delta = 64 / 10_000, 64, 1e-4
    epsilons = [
        PrivacyAccountant(
            DPSettings(noise_multiplier=z, clip_norm=1.0, sampling_rate=rate, delta=delta),
            rounds=rounds,
        ).epsilon
        for z in (1.0, math.sqrt(63 / 64), math.sqrt(32 / 64))
    ]
    assert (
        f"ε = {epsilons[0]:.3f} as reported, {epsilons[1]:.3f} when one device per round "
        f"withholds its share, {epsilons[2]:.3f} when half the cohort does" in page
    )
