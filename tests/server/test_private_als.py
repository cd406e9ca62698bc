"""Private ALS and DP popularity: the devices' statistics against a slow reference, the
sensitivity bound, the noise calibration, the item solve and the accounting."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.client.flower.statistics import als_statistics, item_counts
from stamen.models.als.layout import ALSLayout, als_sensitivity
from stamen.models.batches import UserItems
from stamen.privacy import DPSettings, PrivacyAccountant
from stamen.server.als import ALSSettings, release_noise, solve_item_side
from stamen.simulation.baselines.private_als import (
    dp_item_counts,
    dp_popularity,
    run_private_als,
)


def _data(rng: np.random.Generator, users: int, items: int, most: int) -> UserItems:
    rows = [
        np.sort(rng.choice(items, rng.integers(0, most + 1), replace=False)) for _ in range(users)
    ]
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    flat = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)
    return UserItems(indptr=indptr, items=flat, n_items=items)


def _reference(factors, data, layout, *, user_clip, cap):
    """Device by device, item by item, as the module docstring states it."""
    d1, h = layout.d1, len(layout.head)
    out = []
    for u in range(data.n_users):
        p = factors[u]
        norm = np.linalg.norm(p)
        if norm > user_clip:
            p = p * user_clip / norm
        pt = np.append(p, 1.0)
        gram = np.outer(pt, pt)
        grams = np.zeros((h, d1, d1))
        rhs = np.zeros((h, d1))
        held = [i for i in data.row(u) if i in set(layout.head.tolist())]
        weight = min(1.0, math.sqrt(cap / len(held))) if held else 0.0
        for i in held:
            slot = int(np.searchsorted(layout.head, i))
            grams[slot] = weight * np.outer(pt, pt)
            rhs[slot] = weight * pt
        parts = [gram.ravel()] + ([grams.ravel()] if layout.item_grams else []) + [rhs.ravel()]
        out.append(np.concatenate(parts))
    return np.array(out)


@pytest.mark.parametrize("item_grams", [True, False])
def test_als_statistics_match_the_slow_reference(item_grams: bool) -> None:
    rng = np.random.default_rng(0)
    data = _data(rng, users=12, items=40, most=15)
    layout = ALSLayout(
        dim=5, head=np.sort(rng.choice(40, 25, replace=False)), item_grams=item_grams
    )
    factors = rng.normal(0, 1.0, (12, 5))
    fast = als_statistics(factors, data, layout, user_clip=1.5, cap=4)
    slow = _reference(factors, data, layout, user_clip=1.5, cap=4)
    assert fast.shape == (12, layout.size)
    np.testing.assert_allclose(fast, slow, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    scale=st.floats(1e-3, 1e3),
    cap=st.integers(1, 50),
    user_clip=st.floats(0.05, 10.0),
    item_grams=st.booleans(),
)
def test_one_device_never_exceeds_the_sensitivity(seed, scale, cap, user_clip, item_grams):
    rng = np.random.default_rng(seed)
    data = _data(rng, users=6, items=60, most=60)
    layout = ALSLayout(dim=4, head=np.arange(0, 60, 2), item_grams=item_grams)
    factors = rng.normal(0, scale, (6, 4))
    stats = als_statistics(factors, data, layout, user_clip=user_clip, cap=cap)
    bound = als_sensitivity(user_clip=user_clip, cap=cap, item_grams=item_grams)
    norms = np.linalg.norm(stats, axis=1)
    assert (norms <= bound * (1 + 1e-12)).all()
    # the bound is tight: a device whose factor reaches the clip and that holds at least
    # ``cap`` head items meets it (unclipped, so capping, not clipping, bounded it)
    full = data.counts() > 0
    heads = np.array([np.isin(data.row(u), layout.head).sum() for u in range(6)])
    tight = full & (heads >= cap) & (np.linalg.norm(factors, axis=1) >= user_clip)
    np.testing.assert_allclose(norms[tight], bound, rtol=1e-9)


def test_item_counts_have_norm_one_per_device() -> None:
    data = _data(np.random.default_rng(1), users=20, items=30, most=30)
    rows = item_counts(data)
    expected = (data.counts() > 0).astype(float)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), expected)
    assert (rows[data.counts() > 0] > 0).sum(1).tolist() == data.counts()[
        data.counts() > 0
    ].tolist()


def test_dp_counts_carry_noise_of_the_multiplier() -> None:
    data = _data(np.random.default_rng(2), users=50, items=20000, most=5)
    exact = item_counts(data).sum(0)
    noisy = dp_item_counts(data, noise_multiplier=2.5, rng=np.random.default_rng(3))
    residual = noisy - exact
    # 20,000 N(0, 2.5²) draws: the sample std is within 3% of 2.5 with overwhelming odds
    # (its relative std is 1/sqrt(2 * 20000) = 0.5%)
    assert abs(residual.std() / 2.5 - 1) < 0.03
    assert abs(residual.mean()) < 5 * 2.5 / math.sqrt(20000)


def test_item_solve_recovers_the_exact_minimiser_without_noise() -> None:
    """With exact statistics, the factor step solves the ``ials`` normal equations given
    the bias (uniform confidence without item Grams), checked against a dense solve."""
    rng = np.random.default_rng(4)
    n_users, n_items, dim, l2, alpha = 30, 12, 3, 0.7, 1.5
    data = _data(rng, users=n_users, items=n_items, most=6)
    layout = ALSLayout(dim=dim, head=np.arange(n_items), item_grams=True)
    factors = rng.normal(0, 0.3, (n_users, dim))
    cap = 100  # above every count: weights 1
    total = als_statistics(factors, data, layout, user_clip=10.0, cap=cap).sum(0)
    items, bias = solve_item_side(total, layout, n_items=n_items, alpha=alpha, l2=l2)
    target = np.zeros((n_users, n_items))
    rows, cols = data.pairs()
    target[rows, cols] = 1.0
    conf = 1 + alpha * target
    for i in range(n_items):
        n_i = target[:, i].sum()
        assert bias[i] == pytest.approx((1 + alpha) * n_i / (n_users + alpha * n_i + 1))
        c = conf[:, i]
        lhs = (factors * c[:, None]).T @ factors + l2 * np.eye(dim)
        rhs = (factors * (c * (target[:, i] - bias[i]))[:, None]).sum(0)
        np.testing.assert_allclose(items[i], np.linalg.solve(lhs, rhs), rtol=1e-5, atol=1e-6)


def test_heavy_item_regularisation_leaves_calibrated_popularity() -> None:
    rng = np.random.default_rng(5)
    data = _data(rng, users=40, items=10, most=8)
    layout = ALSLayout(dim=4, head=np.arange(10), item_grams=False)
    total = als_statistics(rng.normal(0, 1, (40, 4)), data, layout, user_clip=1.0, cap=100).sum(0)
    items, bias = solve_item_side(total, layout, n_items=10, alpha=1.0, l2=1e12)
    assert np.abs(items).max() < 1e-9
    counts = np.bincount(data.pairs()[1], minlength=10)
    assert np.array_equal(np.argsort(-bias, kind="stable"), np.argsort(-counts, kind="stable"))


def test_items_outside_the_head_rank_after_it() -> None:
    rng = np.random.default_rng(6)
    data = _data(rng, users=20, items=15, most=6)
    layout = ALSLayout(dim=2, head=np.array([1, 4, 9]), item_grams=False)
    total = als_statistics(rng.normal(0, 1, (20, 2)), data, layout, user_clip=1.0, cap=5).sum(0)
    items, bias = solve_item_side(total, layout, n_items=15, alpha=1.0, l2=1.0)
    tail = np.setdiff1d(np.arange(15), layout.head)
    assert (items[tail] == 0).all() and bias[tail].max() < bias[layout.head].min()


@pytest.mark.parametrize("epsilon", [1.0, 4.0])
def test_private_als_spends_at_most_its_budget_and_is_reproducible(epsilon: float) -> None:
    data = _data(np.random.default_rng(7), users=60, items=50, most=10)
    config = ALSSettings(dim=4, rounds=2, head=30, cap=8)
    first = run_private_als(data, config, epsilon=epsilon, delta=1e-3, seed=3)
    again = run_private_als(data, config, epsilon=epsilon, delta=1e-3, seed=3)
    assert first.epsilon <= epsilon and first.epsilon > 0.95 * epsilon
    # the reported epsilon is Opacus' composition of rounds + 1 full-participation releases
    accountant = PrivacyAccountant(
        DPSettings(noise_multiplier=first.noise_multiplier, sampling_rate=1.0, delta=1e-3),
        rounds=config.rounds + 1,
    )
    assert accountant.epsilon == pytest.approx(first.epsilon)
    np.testing.assert_array_equal(first.items, again.items)
    np.testing.assert_array_equal(first.counts, again.counts)
    other = run_private_als(data, config, epsilon=epsilon, delta=1e-3, seed=4)
    assert not np.array_equal(first.counts, other.counts)


@pytest.mark.parametrize("share", [None, 0.05, 0.25, 0.6, 0.95])
def test_a_count_share_splits_the_budget_without_changing_epsilon(share) -> None:
    """Opacus' RDP accountant, given the two multipliers as they are used (one count
    release at z_c, ``rounds`` statistics releases at z_s), spends what the equal split's
    rounds + 1 releases at z spend: the ε the run reports."""
    from opacus.accountants import RDPAccountant

    rounds, z, delta = 3, 4.0, 1e-3
    z_counts, z_statistics = release_noise(z, ALSSettings(rounds=rounds, count_share=share))
    uneven, equal = RDPAccountant(), RDPAccountant()
    uneven.history = [(z_counts, 1.0, 1), (z_statistics, 1.0, rounds)]
    equal.history = [(z, 1.0, rounds + 1)]
    assert uneven.get_epsilon(delta) == pytest.approx(equal.get_epsilon(delta), rel=1e-9)
    expected = 1 / (rounds + 1) if share is None else share
    assert (rounds + 1) / z**2 * expected == pytest.approx(1 / z_counts**2)
    assert release_noise(0.0, ALSSettings(count_share=share)) == (0.0, 0.0)


def test_a_larger_count_share_makes_the_counts_less_noisy() -> None:
    data = _data(np.random.default_rng(11), users=50, items=20000, most=5)
    exact = item_counts(data).sum(0)
    config = ALSSettings(dim=2, rounds=2, head=10, cap=8)
    equal = run_private_als(data, config, epsilon=2.0, delta=1e-3, seed=0)
    shared = config.model_copy(update={"count_share": 0.8})
    counted = run_private_als(data, shared, epsilon=2.0, delta=1e-3, seed=0)
    assert counted.epsilon == pytest.approx(equal.epsilon)
    for result, chosen in ((equal, config), (counted, shared)):
        z_counts, _ = release_noise(result.noise_multiplier, chosen)
        # 20,000 N(0, z_c²) draws: the sample std is within 3% of z_c (relative std 0.5%)
        assert abs((result.counts - exact).std() / z_counts - 1) < 0.03
    # 0.8 of the budget instead of a third: the counts' std shrinks by sqrt(0.8 * 3)
    ratio = release_noise(1.0, config)[0] / release_noise(1.0, shared)[0]
    assert ratio == pytest.approx(math.sqrt(0.8 * 3))


def test_without_noise_the_counts_are_exact() -> None:
    data = _data(np.random.default_rng(8), users=40, items=30, most=8)
    result = run_private_als(
        data,
        ALSSettings(dim=3, rounds=1, head=30, cap=1000),
        epsilon=math.inf,
        delta=1e-3,
        seed=0,
    )
    assert result.noise_multiplier == 0 and result.epsilon == math.inf
    np.testing.assert_allclose(result.counts, item_counts(data).sum(0))


def test_dp_popularity_spends_its_budget_in_one_release() -> None:
    data = _data(np.random.default_rng(9), users=80, items=40, most=10)
    counts, spent = dp_popularity(data, epsilon=2.0, delta=1e-3, seed=0)
    assert 1.9 < spent <= 2.0 and counts.shape == (40,)
    exact, free = dp_popularity(data, epsilon=math.inf, delta=1e-3, seed=0)
    assert free == math.inf
    np.testing.assert_allclose(exact, item_counts(data).sum(0))


def test_a_count_release_sets_every_bias_on_the_statistics_scale() -> None:
    rng = np.random.default_rng(10)
    data = _data(rng, users=50, items=20, most=8)
    layout = ALSLayout(dim=3, head=np.arange(0, 20, 2), item_grams=False)
    total = als_statistics(rng.normal(0, 1, (50, 3)), data, layout, user_clip=1.0, cap=100).sum(0)
    counts = np.bincount(data.pairs()[1], minlength=20).astype(float)
    # counts on another scale (x 0.25): kappa rescales them onto the statistics' counts
    _, bias = solve_item_side(total, layout, n_items=20, alpha=1.0, l2=1e12, counts=0.25 * counts)
    expected = 2.0 * counts / (50 + counts + 1.0)
    np.testing.assert_allclose(bias, expected, rtol=1e-6)
