"""Cohort sampling: Poisson under DP (sizes vary, rate q, reproducible by seed, over stable
device ids), the accountant's rate equal to the sampler's, skipped small cohorts charged,
and the fixed-denominator mean."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from flwr.app import Error
from flwr.common import (
    Code,
    GetPropertiesRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from helpers.static_clients import StaticClients
from helpers.updates import fit_res, zero_shared

from stamen.models.mf.settings import DEVICE_ID_KEY
from stamen.privacy import Purpose, SecAggSettings, Streams, UserDP
from stamen.server import cohorts as cohorts_module
from stamen.server import strategy as strategy_module
from stamen.server.cohorts import sample_cohort
from stamen.server.rounds import min_poisson_cohort
from stamen.server.settings import ServerSettings
from stamen.server.strategy import FederatedAveraging

N_ITEMS, DIM = 20, 3


def test_poisson_cohorts_vary_in_size_at_rate_q() -> None:
    population, rate, rounds = 1000, 0.05, 400
    cohorts = [
        sample_cohort(population, seed=3, rnd=r, purpose=0, rate=rate) for r in range(rounds)
    ]
    sizes = np.array([len(c) for c in cohorts])
    # Binomial(1000, 0.05) per round: mean 50, std 6.9; the mean of 400 rounds has std 0.34
    assert abs(sizes.mean() - 50) < 4 * math.sqrt(population * rate * (1 - rate) / rounds)
    assert sizes.std() > 3 and len(set(sizes.tolist())) > 10
    # every device's marginal inclusion rate is q: pooled, 400,000 Bernoulli(0.05) draws
    inclusions = np.bincount(np.concatenate(cohorts), minlength=population)
    assert abs(inclusions.sum() / (population * rounds) - rate) < 4 * math.sqrt(
        rate * (1 - rate) / (population * rounds)
    )
    assert all((np.diff(c) > 0).all() for c in cohorts)


def test_cohorts_are_reproducible_by_seed_and_differ_across_seeds_and_rounds() -> None:
    a = sample_cohort(500, seed=1, rnd=4, purpose=0, rate=0.1)
    assert np.array_equal(a, sample_cohort(500, seed=1, rnd=4, purpose=0, rate=0.1))
    assert not np.array_equal(a, sample_cohort(500, seed=2, rnd=4, purpose=0, rate=0.1))
    assert not np.array_equal(a, sample_cohort(500, seed=1, rnd=5, purpose=0, rate=0.1))
    fixed = sample_cohort(500, seed=1, rnd=4, purpose=0, size=30)
    assert len(fixed) == 30
    assert np.array_equal(fixed, sample_cohort(500, seed=1, rnd=4, purpose=0, size=30))


def test_a_device_inclusion_does_not_depend_on_who_else_is_connected() -> None:
    everyone = sample_cohort(300, seed=0, rnd=1, purpose=0, rate=0.2)
    half = np.arange(0, 300, 2)
    some = sample_cohort(300, seed=0, rnd=1, purpose=0, rate=0.2, available=half)
    assert np.array_equal(some, np.intersect1d(everyone, half))
    fixed = sample_cohort(300, seed=0, rnd=1, purpose=0, size=10, available=half)
    assert set(fixed.tolist()) <= set(half.tolist()) and len(fixed) == 10


def test_a_poisson_draw_in_chunks_is_the_draw_of_all_uniforms_at_once(monkeypatch) -> None:
    population, rate = 1000, 0.1
    whole = Streams(5).cohort(2, Purpose.TRAINING).random(population) < rate
    monkeypatch.setattr(cohorts_module, "CHUNK", 7)  # 143 chunks, the last one short
    chunked = sample_cohort(population, seed=5, rnd=2, purpose=Purpose.TRAINING, rate=rate)
    assert np.array_equal(chunked, np.flatnonzero(whole))
    some = np.array([3, 500, 999])
    assert np.array_equal(
        sample_cohort(
            population, seed=5, rnd=2, purpose=Purpose.TRAINING, rate=rate, available=some
        ),
        np.intersect1d(np.flatnonzero(whole), some),
    )


def test_a_cohort_draws_memory_does_not_grow_with_the_ids() -> None:
    """A Poisson draw over 10**7 ids holds a chunk of uniforms and its mask, the chosen ids
    and one small array per chunk, not the 80 MB of all the uniforms; a fixed-size draw
    holds the connected ids, whatever their magnitude."""
    population, rate = 10**7, 1e-5
    chunks = -(-population // cohorts_module.CHUNK)
    expected = population * rate
    bound = 2 * cohorts_module.CHUNK * (8 + 1) + 2 * 8 * 10 * expected + 256 * chunks
    tracemalloc.start()
    try:
        cohort = sample_cohort(population, seed=0, rnd=1, purpose=0, rate=rate)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        huge = np.array([5, 10**11, 10**12 - 1])
        fixed = sample_cohort(10**12, seed=0, rnd=1, purpose=0, size=2, available=huge)
        everyone = sample_cohort(10**12, seed=0, rnd=1, purpose=0, size=3)
        _, fixed_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert 0 < len(cohort) < 10 * expected
    assert peak < bound < population * 8, (peak, bound)
    assert len(fixed) == 2 and set(fixed.tolist()) <= set(huge.tolist())
    assert len(everyone) == 3 and everyone.max() < 10**12
    assert fixed_peak < 64 * 1024, fixed_peak


@pytest.mark.parametrize("kwargs", [{}, {"size": 3, "rate": 0.1}, {"rate": 0.0}, {"rate": 1.5}])
def test_bad_sampler_arguments_are_refused(kwargs) -> None:
    with pytest.raises(ValueError):
        sample_cohort(10, seed=0, rnd=1, purpose=0, **kwargs)
    with pytest.raises(ValueError, match=r"device ids must lie in \[0, 10\)"):
        sample_cohort(10, seed=0, rnd=1, purpose=0, size=2, available=np.array([3, 12]))


def _strategy(
    dp: UserDP, *, cohort: int, population: int, secagg: bool = False
) -> FederatedAveraging:
    settings = ServerSettings(
        rounds=50,
        clients_per_round=cohort,
        dp=dp,
        secagg=SecAggSettings(enabled=secagg, clipping_range=50.0),
    )
    return FederatedAveraging(settings, initial=zero_shared(N_ITEMS, DIM), population=population)


def _devices(instructions) -> list[int]:
    return sorted(proxy.device for proxy, _ in instructions)


def test_private_strategy_samples_poisson_cohorts_at_the_accounted_rate() -> None:
    population, cohort = 200, 20
    strategy = _strategy(
        UserDP(mode="central", noise_multiplier=1.0), cohort=cohort, population=population
    )
    assert strategy.accountant is not None
    rate = strategy.accountant.settings.sampling_rate
    assert rate == cohort / population
    clients = StaticClients(population)
    params = ndarrays_to_parameters(zero_shared(N_ITEMS, DIM))
    for rnd in range(1, 11):
        chosen = _devices(strategy.configure_fit(rnd, params, clients))
        expected = sample_cohort(population, seed=0, rnd=rnd, purpose=0, rate=rate)
        assert chosen == expected.tolist()
    sizes = {len(_devices(strategy.configure_fit(r, params, clients))) for r in range(1, 11)}
    assert len(sizes) > 1


@pytest.mark.parametrize("dp", [UserDP(), UserDP(mode="central", noise_multiplier=1.0)])
def test_the_same_seed_picks_the_same_people_whatever_flower_names_them(dp) -> None:
    params = ndarrays_to_parameters(zero_shared(N_ITEMS, DIM))
    runs = []
    for shuffle in (0, 1):
        strategy = _strategy(dp, cohort=8, population=40)
        clients = StaticClients(40, shuffle=shuffle)
        runs.append([_devices(strategy.configure_fit(r, params, clients)) for r in (1, 2, 3)])
    assert runs[0] == runs[1]
    cids = [
        sorted(
            p.cid
            for p, _ in _strategy(dp, cohort=8, population=40).configure_fit(
                1, params, StaticClients(40, shuffle=s)
            )
        )
        for s in (0, 1)
    ]
    assert cids[0] != cids[1]  # the node ids did differ


def test_a_cohort_too_small_for_secagg_is_skipped_and_still_charged() -> None:
    # expected cohort 5 = SecAgg+'s shares: about 44% of Poisson(ish) cohorts fall short
    strategy = _strategy(
        UserDP(mode="central", noise_multiplier=1.0), cohort=5, population=400, secagg=True
    )
    assert strategy.plan.min_cohort == 5
    params = ndarrays_to_parameters(zero_shared(N_ITEMS, DIM))
    clients = StaticClients(400)
    skipped = 0
    for rnd in range(1, 21):
        instructions = strategy.configure_fit(rnd, params, clients)
        assert strategy.accountant is not None
        strategy.configure_evaluate(rnd, params, clients)  # the round's close (no evaluation)
        if not instructions:
            skipped += 1
            record = strategy.history[-1]
            assert record.round == rnd and "below the 5" in (record.skipped or "")
            assert record.privacy is not None
            assert record.privacy.epsilon == strategy.accountant.epsilon
        else:
            assert len(instructions) >= 5
        # a skipped round is charged at once; a running one when it aggregates (not here)
        assert strategy.accountant.rounds == skipped
    assert 0 < skipped < 20


def test_distributed_noise_needs_enough_devices_for_its_shares() -> None:
    settings = ServerSettings(
        clients_per_round=50,
        dp=UserDP(mode="distributed", noise_multiplier=2.0, clip_norm=1.0),
        secagg=SecAggSettings(clipping_range=3.0),
    )
    # a share z C / sqrt(n) must leave 7 of its std inside the range: n >= (7 * 2 / 2)**2
    assert min_poisson_cohort(settings, 2.0) == 49


def test_private_mean_divides_by_the_expected_cohort() -> None:
    cohort, population = 10, 100
    strategy = _strategy(
        UserDP(mode="central", noise_multiplier=0.0, clip_norm=10.0),
        cohort=cohort,
        population=population,
    )
    ones = [np.ones((N_ITEMS, DIM), np.float32), np.ones(N_ITEMS, np.float32)]  # within C
    reported = 7  # whatever the Poisson draw, the sum is divided by the expected 10
    strategy.configure_fit(
        1, ndarrays_to_parameters(zero_shared(N_ITEMS, DIM)), StaticClients(population)
    )
    results = [(None, fit_res(ones)) for _ in range(reported)]
    strategy.server.step = lambda mean: mean  # type: ignore[method-assign]
    params, _ = strategy.aggregate_fit(1, results, [])
    for array in parameters_to_ndarrays(params):
        np.testing.assert_allclose(array, reported / cohort)


def test_an_error_reply_flower_lists_twice_counts_as_one_failure() -> None:
    """Flower 1.42's SecAgg+ collect stage wraps each error reply in two exceptions; the
    round records one failure per device, and two devices' equal errors stay two."""
    strategy = _strategy(UserDP(), cohort=4, population=4)
    strategy.configure_fit(1, ndarrays_to_parameters(zero_shared(N_ITEMS, DIM)), StaticClients(4))
    unavailable, other = Error(code=0, reason="Node Unavailable"), Error(0, "Node Unavailable")
    failures = [Exception(unavailable), Exception(other), Exception(unavailable)]
    ones = [np.zeros((N_ITEMS, DIM), np.float32), np.zeros(N_ITEMS, np.float32)]
    results = [(None, fit_res(ones)) for _ in range(2)]
    strategy.aggregate_fit(1, results, failures)  # type: ignore[arg-type]
    record = strategy._record
    assert record.failures == 2 and len(record.failure_reasons or []) == 2


def test_a_node_failing_to_name_its_device_is_asked_again_then_left_out(monkeypatch) -> None:
    """A node's id question that fails once (an error reply, as Flower raises it) is asked
    again and the node takes part; one that keeps failing is left out of the round after
    ``ID_RETRY_S``, recorded with the reason, and asked again the next round."""
    monkeypatch.setattr(strategy_module, "ID_RETRY_S", 0.6)
    clients = StaticClients(6)
    asked: dict[str, int] = {}
    proxies = list(clients.all().values())
    flaky, broken = proxies[0], proxies[1]
    answers = {p.cid: p.get_properties for p in proxies}

    def failing(proxy, times: int):  # noqa: ANN001, ANN202
        answer = answers[proxy.cid]

        def get_properties(ins, timeout, group_id):  # noqa: ANN001, ANN202
            asked[proxy.cid] = asked.get(proxy.cid, 0) + 1
            if asked[proxy.cid] <= times:
                raise ValueError("Message contains an Error (reason: node unavailable)")
            return answer(ins, timeout, group_id)

        return get_properties

    flaky.get_properties = failing(flaky, 1)
    broken.get_properties = failing(broken, 10**6)
    strategy = _strategy(UserDP(), cohort=6, population=6)
    params = ndarrays_to_parameters(zero_shared(N_ITEMS, DIM))
    chosen = _devices(strategy.configure_fit(1, params, clients))
    assert chosen == sorted(p.device for p in proxies if p is not broken)
    assert asked[flaky.cid] == 2
    strategy.finish_round(1)  # its record, in the history
    (left_out,) = strategy.history[-1].unidentified or []
    assert left_out.node == broken.cid and "node unavailable" in left_out.reason
    assert asked[broken.cid] >= 2
    broken.get_properties = failing(broken, 0)  # recovered: part of the next round
    assert _devices(strategy.configure_fit(2, params, clients)) == sorted(p.device for p in proxies)
    assert asked[flaky.cid] == 2  # an identified node is not asked again
    strategy.finish_round(2)
    assert strategy.history[-1].unidentified is None


def test_an_id_out_of_range_or_claimed_twice_leaves_its_nodes_out(monkeypatch) -> None:
    monkeypatch.setattr(strategy_module, "ID_RETRY_S", 0.2)
    clients = StaticClients(6)
    proxies = list(clients.all().values())

    def claiming(device: int):  # noqa: ANN202
        def get_properties(ins, timeout, group_id):  # noqa: ANN001, ANN202
            return GetPropertiesRes(Status(Code.OK, ""), properties={DEVICE_ID_KEY: device})

        return get_properties

    huge, twin = proxies[0], proxies[1]
    huge.get_properties = claiming(2**40)  # would size a cohort draw in terabytes
    twin.get_properties = claiming(proxies[2].device)  # answers for another device
    strategy = _strategy(UserDP(), cohort=3, population=6)
    params = ndarrays_to_parameters(zero_shared(N_ITEMS, DIM))
    chosen = _devices(strategy.configure_fit(1, params, clients))
    assert set(chosen) <= {p.device for p in proxies[3:]}
    strategy.finish_round(1)
    reasons = {u.node: u.reason for u in strategy.history[-1].unidentified or []}
    assert "outside [0, 6)" in reasons[huge.cid]
    assert (
        reasons[twin.cid]
        == reasons[proxies[2].cid]
        == (f"device id {proxies[2].device} claimed by 2 nodes")
    )
