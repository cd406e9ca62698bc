"""The round engine is one: the Flower strategies and the batched simulation follow the
same ``RoundPlan`` (budget, cohorts, minimum cohort, fixed-denominator release, noise
streams), so for the same seed they draw the same cohorts and reach the same model: DP-FedAvg plain,
central and distributed, the ranker, private ALS and the trending counts.

The Flower path here is the strategy's own ``configure_fit`` / ``aggregate_fit`` with
every sampled device answering through the ClientApp's ``DeviceClient.fit`` in process (plain
aggregation: SecAgg+ only adds its quantisation, checked in ``test_batched.py``)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from helpers.static_clients import StaticClients
from helpers.updates import fit_res

from stamen.client.flower.app import DeviceClient, DeviceData
from stamen.models import ReleaseCatalog, UserItems
from stamen.models.ranker.model import RankingExamples
from stamen.models.ranker.settings import RankerSettings
from stamen.models.ranker.weights import FEATURES
from stamen.models.registry import build_model
from stamen.privacy import CentralGaussianSum, DistributedGaussianSum, Purpose, Streams, UserDP
from stamen.server.ranker_strategy import RankerAveraging
from stamen.server.rounds import RoundPlan
from stamen.server.settings import ServerSettings
from stamen.server.strategy import FederatedAveraging
from stamen.simulation.engines.batched import model_step, run_rounds
from stamen.simulation.engines.ranker import train_ranker

N_USERS, N_ITEMS, COHORT, ROUNDS = 40, 30, 8, 3
N_TRENDING_ITEMS = 400


def _history(seed: int = 0) -> UserItems:
    rng = np.random.default_rng(seed)
    rows = [
        rng.choice(N_ITEMS, size=int(rng.integers(2, 9)), replace=False) for _ in range(N_USERS)
    ]
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    return UserItems(indptr=indptr, items=np.concatenate(rows), n_items=N_ITEMS)


def _catalog() -> ReleaseCatalog:
    return ReleaseCatalog.build([str(i) for i in range(N_ITEMS)], titles=[""] * N_ITEMS)


def _flower(strategy: FederatedAveraging, client_of) -> tuple[list[np.ndarray], list[list[int]]]:  # noqa: ANN001
    """Run the strategy's rounds with every sampled device answering in process; the
    final shared arrays and each round's cohort (device ids)."""
    clients = StaticClients(N_USERS, shuffle=5)
    parameters = strategy.initialize_parameters(clients)  # type: ignore[arg-type]
    assert parameters is not None
    cohorts = []
    for rnd in range(1, strategy.settings.rounds + 1):
        instructions = strategy.configure_fit(rnd, parameters, clients)  # type: ignore[arg-type]
        cohorts.append(sorted(proxy.device for proxy, _ in instructions))
        if instructions:
            results = []
            for proxy, ins in instructions:
                sent = parameters_to_ndarrays(ins.parameters)
                results.append((proxy, fit_res(client_of(proxy.device).fit(sent, ins.config)[0])))
            parameters, _ = strategy.aggregate_fit(rnd, results, [])  # type: ignore[assignment]
        strategy.configure_evaluate(rnd, parameters, clients)  # type: ignore[arg-type]
    return parameters_to_ndarrays(parameters), cohorts


def _recording(step):  # noqa: ANN001, ANN202
    """``step`` that also records which devices each round asked."""
    seen: dict[int, list[int]] = {}

    def recorded(shared, devices, rnd):  # noqa: ANN001, ANN202
        seen.setdefault(rnd, []).extend(int(d) for d in devices)
        return step(shared, devices, rnd)

    return recorded, seen


@pytest.mark.parametrize(
    "dp",
    [
        UserDP(),
        UserDP(mode="central", noise_multiplier=1.0, clip_norm=0.05),
        UserDP(mode="distributed", noise_multiplier=0.0, clip_norm=0.05),
    ],
    ids=["plain", "central", "distributed"],
)
def test_dp_fedavg_rounds_agree_between_flower_and_the_batched_engine(dp: UserDP) -> None:
    settings = ServerSettings(
        rounds=ROUNDS,
        clients_per_round=COHORT,
        evaluate=False,
        seed=4,
        local={"dim": 4},
        secagg={"enabled": False},
        dp=dp,
    )
    history, catalog = _history(), _catalog()
    model = build_model("mf", settings.local, catalog)
    initial = model.init_shared(settings.seed)

    def client_of(device: int) -> DeviceClient:
        data = DeviceData(history.row(device), catalog)
        return DeviceClient(data, {}, seed=settings.seed, row=device)  # type: ignore[arg-type]

    strategy = FederatedAveraging(settings, initial=initial, population=N_USERS)
    flower, flower_cohorts = _flower(strategy, client_of)

    users = np.arange(N_USERS)
    step, seen = _recording(model_step(model, history, users, seed=settings.seed))
    batched = run_rounds(N_USERS, settings, initial=initial, step=step)
    batched_cohorts = [sorted(seen.get(rnd, [])) for rnd in range(1, ROUNDS + 1)]

    assert flower_cohorts == batched_cohorts
    if dp.enabled:  # Poisson: the sizes vary around the expected cohort
        assert len({len(c) for c in flower_cohorts}) > 1 or ROUNDS == 1
        assert strategy.privacy_report() == batched.privacy
    for f, b in zip(flower, batched.shared, strict=True):
        np.testing.assert_allclose(f, b, rtol=1e-5, atol=1e-6)


def test_ranker_rounds_agree_between_flower_and_the_batched_engine() -> None:
    ranker = RankerSettings(hidden=4, local_steps=2)
    settings = ServerSettings(
        rounds=ROUNDS,
        clients_per_round=COHORT,
        evaluate=False,
        seed=2,
        secagg={"enabled": False},
        optimizer={"name": "fedavg", "lr": 1.0},
        dp=UserDP(mode="central", noise_multiplier=0.5, clip_norm=0.5),
    )
    rng = np.random.default_rng(7)
    lists = []
    for _ in range(N_USERS):
        n = int(rng.integers(3, 8))
        taken = np.zeros(n, bool)
        taken[rng.integers(n)] = True
        lists.append((rng.normal(size=(n, len(FEATURES))).astype(np.float32), taken))
    examples = RankingExamples.stack(lists)

    def client_of(device: int) -> DeviceClient:
        data = DeviceData(np.zeros(0, np.int64), _catalog())
        return DeviceClient(
            data,
            {},  # type: ignore[arg-type]
            seed=settings.seed,
            row=device,
            ranking_example=lambda: lists[device],
        )

    retrieval = build_model("mf", settings.local, _catalog()).init_shared(0)
    strategy = RankerAveraging(settings, ranker=ranker, retrieval=retrieval, population=N_USERS)
    flower, _ = _flower(strategy, client_of)
    batched = train_ranker(examples, settings, ranker)
    assert strategy.privacy_report() == batched.result.privacy
    for f, b in zip(flower, batched.weights, strict=True):
        np.testing.assert_allclose(f, b, rtol=1e-5, atol=1e-6)


def test_a_mechanism_is_chosen_by_mode_and_draws_from_its_named_stream() -> None:
    dp = UserDP(mode="central", noise_multiplier=2.0, clip_norm=0.5)
    central = dp.mechanism(population=100, cohort=10, rounds=5, seed=3)
    assert isinstance(central, CentralGaussianSum) and central.sigma == 1.0
    assert central.share_std(25) == 0.0 and central.plain_bound() == pytest.approx(0.5 * 1.0001)
    released = central.release_sum(np.zeros(4), rnd=2)
    np.testing.assert_array_equal(
        released, Streams(3).central_noise(2, Purpose.TRAINING).normal(0.0, 1.0, 4)
    )
    assert central.accountant.rounds == 1
    query = dp.mechanism(population=100, cohort=10, rounds=5, seed=3, purpose=Purpose.TRENDING)
    assert not np.array_equal(query.release_sum(np.zeros(4), rnd=2), released)

    distributed = UserDP(mode="distributed", noise_multiplier=2.0, clip_norm=0.5).mechanism(
        population=100, cohort=10, rounds=5, seed=3
    )
    assert isinstance(distributed, DistributedGaussianSum)
    assert distributed.share_std(25) == pytest.approx(1.0 / 5)
    assert distributed.plain_bound() == np.inf
    np.testing.assert_array_equal(distributed.release_sum(np.ones(3), rnd=1), np.ones(3))


def test_the_plan_skips_small_poisson_cohorts_and_charges_them() -> None:
    settings = ServerSettings(
        rounds=30,
        clients_per_round=5,
        seed=1,
        dp=UserDP(mode="central", noise_multiplier=1.0),
        secagg={"clipping_range": 50.0},
    )
    plan = RoundPlan(settings, population=400)
    assert plan.min_cohort == 5 and plan.expected_cohort == 5
    draws = [plan.draw(rnd) for rnd in range(1, 31)]
    skipped = [d for d in draws if d.skipped is not None]
    assert skipped and all(len(d.cohort) < 5 for d in skipped)
    assert all(len(d.cohort) >= 5 for d in draws if d.skipped is None)
    assert plan.mechanism is not None and plan.mechanism.accountant.rounds == len(skipped)


def test_private_als_rounds_agree_between_flower_and_the_batched_simulation() -> None:
    from stamen.server.als import ALSSettings
    from stamen.server.als_strategy import FederatedALS, als_server_settings
    from stamen.simulation.baselines.private_als import run_private_als

    history, catalog = _history(seed=3), _catalog()
    als = ALSSettings(dim=3, rounds=2, head=12, cap=4, user_clip=1.0)
    base = ServerSettings(clients_per_round=2, evaluate=False, seed=5, secagg={"enabled": False})
    settings = als_server_settings(base, als, devices=N_USERS)
    initial = FederatedALS.initial(N_ITEMS, als, seed=settings.seed)
    strategy = FederatedALS(settings, als, initial=initial, population=N_USERS)

    def client_of(device: int) -> DeviceClient:
        data = DeviceData(history.row(device), catalog)
        return DeviceClient(data, {}, seed=settings.seed, row=device)  # type: ignore[arg-type]

    flower, cohorts = _flower(strategy, client_of)
    assert cohorts == [list(range(N_USERS))] * (als.rounds + 1)  # every device, every round
    simulated = run_private_als(
        history, als, epsilon=float("inf"), delta=1 / N_USERS, seed=settings.seed
    )
    np.testing.assert_allclose(flower[0], simulated.items, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(flower[1], simulated.bias, rtol=1e-4, atol=1e-6)
    assert np.abs(flower[0]).max() > 0.01


def test_trending_counts_agree_between_flower_and_the_batched_simulation() -> None:
    from stamen.simulation.datasets import generate_synthetic
    from stamen.simulation.engines.trending import private_trending, true_trending
    from stamen.simulation.protocol.split import leave_one_out

    split = leave_one_out(
        generate_synthetic(N_USERS, N_TRENDING_ITEMS, seed=2).interactions, seed=0
    )
    assert split.train_times is not None
    cap, epsilon, seed = 5, 4.0, 3
    counts, now = true_trending(split, window_days=30.0, cap=cap)
    batched, report = private_trending(counts, epsilon=epsilon, users=N_USERS, cap=cap, seed=seed)
    trending = {
        "every": 1,
        "window_days": 30.0,
        "cap": cap,
        "now": now,
        "dp": {"mode": "central", "target_epsilon": epsilon},
    }
    settings = ServerSettings(
        rounds=1, clients_per_round=N_USERS, evaluate=False, seed=seed,
        analytics={"trending": trending},
    )  # fmt: skip
    catalog = ReleaseCatalog.build(
        [str(i) for i in range(N_TRENDING_ITEMS)], titles=[""] * N_TRENDING_ITEMS
    )
    strategy = FederatedAveraging(
        settings, initial=build_model("mf", settings.local, catalog).init_shared(0),
        population=N_USERS,
    )  # fmt: skip
    clients = StaticClients(N_USERS, shuffle=2)
    query = strategy.ask_trending(1)
    instructions = query.configure_fit(1, ndarrays_to_parameters([]), clients)  # type: ignore[arg-type]
    assert sorted(proxy.device for proxy, _ in instructions) == list(range(N_USERS))
    results = []
    for proxy, ins in instructions:
        u = proxy.device
        times = split.train_times[split.train.indptr[u] : split.train.indptr[u + 1]]
        data = DeviceData(split.train.row(u), catalog, train_times=times)
        device = DeviceClient(data, {}, seed=seed, row=u)  # type: ignore[arg-type]
        sent = parameters_to_ndarrays(ins.parameters)
        results.append((proxy, fit_res(device.fit(sent, ins.config)[0])))
    query.aggregate_fit(1, results, [])  # type: ignore[arg-type]
    assert query.result is not None and query.report() is not None
    np.testing.assert_allclose(np.maximum(query.result.total, 0.0), batched, atol=1e-9)
    assert query.report()["epsilon"] == report["epsilon"]  # type: ignore[index]
    assert report["noise_std"] > 0 and np.any(batched != np.maximum(counts, 0))
