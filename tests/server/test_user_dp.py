"""User-level DP in the federated loop: device clipping and noise shares, central noise,
accounting against Opacus, and the stop at the target ε (strategy driven directly)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from helpers.static_clients import StaticClients
from helpers.updates import fit_res, zero_shared
from opacus.accountants import RDPAccountant

from stamen.client.flower.app import DeviceClient, DeviceData
from stamen.client.flower.tasks import check_upload, privatise
from stamen.models.wire import DeviceDP, Request, Task
from stamen.privacy import SecAggSettings, UserDP, update_norm
from stamen.server.settings import ServerSettings
from stamen.server.strategy import FederatedAveraging
from stamen.simulation.engines.flower import release_catalog_of

N_ITEMS, DIM = 50, 4


def _strategy(
    dp: UserDP, *, rounds: int = 10, cohort: int = 5, population: int = 50
) -> FederatedAveraging:
    # a strategy unit test: the aggregation path is the same with or without SecAgg+
    settings = ServerSettings(
        rounds=rounds,
        clients_per_round=cohort,
        eval_every=0,  # the last round evaluates
        dp=dp,
        secagg=SecAggSettings(enabled=False),
    )
    initial = zero_shared(N_ITEMS, DIM)
    return FederatedAveraging(settings, initial=initial, population=population)


def test_device_clips_its_whole_update_and_adds_its_noise_share() -> None:
    data = DeviceData(np.array([1, 2, 3]), release_catalog_of(N_ITEMS))
    client = DeviceClient(data, {}, seed=0, row=0)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    big = [
        rng.normal(size=(N_ITEMS, DIM)).astype(np.float32),
        rng.normal(size=N_ITEMS).astype(np.float32),
    ]

    def request(dp: DeviceDP | None) -> Request:
        return Request(task=Task.MODEL, round=1, dp=dp)

    clipped = privatise(client, big, request(DeviceDP(0.5, 0.0)), purpose=2)
    assert update_norm(clipped) == pytest.approx(0.5, rel=1e-5)
    noised = privatise(client, big, request(DeviceDP(0.5, 0.2)), purpose=2)
    residual = np.concatenate([(n - c).ravel() for n, c in zip(noised, clipped, strict=True)])
    assert residual.std() == pytest.approx(0.2, rel=0.1)
    assert privatise(client, big, request(None), purpose=2) is big


def test_strategy_sends_dp_settings_and_distributed_shares() -> None:
    strategy = _strategy(UserDP(mode="distributed", noise_multiplier=1.2, clip_norm=0.3), cohort=4)
    config = strategy.request(1).to_config()
    assert config["dp-clip-norm"] == 0.3
    assert config["dp-noise-std"] == pytest.approx(1.2 * 0.3 / 2)
    central = _strategy(UserDP(mode="central", noise_multiplier=1.2, clip_norm=0.3))
    assert central.request(1).to_config()["dp-noise-std"] == 0.0


def test_central_noise_is_calibrated_and_rounds_are_accounted_like_opacus() -> None:
    z, clip, cohort, population = 1.5, 0.5, 5, 50
    strategy = _strategy(UserDP(mode="central", noise_multiplier=z, clip_norm=clip), cohort=cohort)
    zeros = zero_shared(N_ITEMS, DIM)
    strategy.configure_fit(1, ndarrays_to_parameters(zeros), StaticClients(population))
    params, _ = strategy.aggregate_fit(1, [(None, fit_res(zeros)) for _ in range(cohort)], [])
    model = np.concatenate([a.ravel() for a in parameters_to_ndarrays(params)])
    # FedAdam's first step normalises; check the noise through the recorded pseudo-gradient:
    assert np.abs(model).max() > 0
    strategy2 = _strategy(UserDP(mode="central", noise_multiplier=z, clip_norm=clip), cohort=cohort)
    strategy2.server.optimizer.param_groups[0]["lr"] = 0.0
    mean = strategy2.plan.release([np.zeros(20_000, np.float32)], rnd=1, devices=cohort)
    assert mean[0].std() == pytest.approx(z * clip / cohort, rel=0.05)
    for rnd in range(2, 4):
        strategy2.plan.release([np.zeros(3, np.float32)], rnd=rnd, devices=cohort)
    opacus = RDPAccountant()
    opacus.history = [(z, cohort / population, 3)]
    report = strategy2.privacy_report()
    assert report is not None and report["rounds"] == 3 and report["mode"] == "central"
    assert report["epsilon"] == pytest.approx(opacus.get_epsilon(delta=1 / population))
    assert report["delta"] == pytest.approx(1 / population)


def test_run_stops_at_the_target_epsilon() -> None:
    dp = UserDP(mode="central", noise_multiplier=0.8, clip_norm=1.0, target_epsilon=3.0)
    strategy = _strategy(dp, rounds=50, cohort=5)
    allowed = strategy.accountant.rounds_within()
    assert 0 < allowed < 50
    zeros = zero_shared(N_ITEMS, DIM)
    clients = StaticClients(50)
    ran = 0
    for rnd in range(1, 51):
        params = ndarrays_to_parameters(zeros)
        instructions = strategy.configure_fit(rnd, params, clients)
        if instructions:
            strategy.aggregate_fit(rnd, [(None, fit_res(zeros)) for _ in instructions], [])
            ran += 1
        strategy.configure_evaluate(rnd, params, clients)  # closes every round but the last
    assert ran == allowed
    assert strategy.accountant.epsilon <= 3.0
    # skipped rounds are recorded; the last round's record completes at its evaluation
    assert sum(h.skipped is not None for h in strategy.history) == 50 - allowed - 1
    strategy.finish_round(50)
    last = {k: v for k, v in strategy.history[-1].to_json().items() if k != "seconds"}
    assert last == {"round": 50, "skipped": "privacy budget (target epsilon) reached"}


def test_noise_is_sized_from_a_target_when_no_multiplier_is_given() -> None:
    strategy = _strategy(UserDP(mode="central", target_epsilon=4.0), rounds=20, cohort=5)
    z = strategy.accountant.settings.noise_multiplier
    assert z > 0 and strategy.accountant.epsilon_after(20) <= 4.0 + 1e-6


def test_dp_without_noise_or_target_is_rejected() -> None:
    with pytest.raises(ValueError, match="noise_multiplier or target_epsilon"):
        UserDP(mode="central")


@pytest.mark.parametrize("given", [{"target_epsilon": 4.0}, {"noise_multiplier": 1.0}])
def test_noise_settings_without_a_dp_mode_are_rejected(given: dict) -> None:
    with pytest.raises(ValueError, match=r"mode \(--dp\) is 'off'"):
        UserDP(**given)


def test_device_refuses_unsigned_or_tampered_releases() -> None:
    from stamen.privacy import SignatureError, generate_signing_key, sign_arrays

    private, public = generate_signing_key()
    data = DeviceData(np.array([1, 2, 3]), release_catalog_of(N_ITEMS))
    client = DeviceClient(data, {}, seed=0, row=0, release_key=public)  # type: ignore[arg-type]
    shared = zero_shared(N_ITEMS, DIM)
    request = Request(task=Task.MODEL, round=3, settings={"dim": DIM, "loss": "ials"})
    config = request.to_config()
    signature = sign_arrays(shared, round=3, private_key=private)
    good = request.with_(signature=signature).to_config()
    client.fit(shared, good)  # verifies
    with pytest.raises(SignatureError, match="unsigned"):
        client.fit(shared, config)
    tampered = [shared[0].copy(), shared[1].copy()]
    tampered[1][7] = 1.0
    with pytest.raises(SignatureError, match="does not verify"):
        client.fit(tampered, good)
    with pytest.raises(SignatureError, match="does not verify"):
        client.evaluate(shared, {**good, "server-round": 4})


def test_distributed_noise_shares_must_fit_secaggs_clipping_range() -> None:
    dp = UserDP(mode="distributed", noise_multiplier=4.0, clip_norm=1.0)
    tight = ServerSettings(
        rounds=10, clients_per_round=5, dp=dp, secagg=SecAggSettings(clipping_range=1.0)
    )
    initial = zero_shared(N_ITEMS, DIM)
    with pytest.raises(ValueError, match="clipping_range"):
        FederatedAveraging(tight, initial=initial, population=50)
    wide = tight.model_copy(update={"secagg": SecAggSettings(clipping_range=14.0)})
    assert FederatedAveraging(wide, initial=initial, population=50).accountant is not None
    # unset, the range is derived: C plus 7 stds of a share of the smallest cohort it
    # leaves room for (5: num_shares, above half of 5 expected devices)
    derived = tight.model_copy(update={"secagg": SecAggSettings()})
    plan = FederatedAveraging(derived, initial=initial, population=50).plan
    assert plan.secagg.clipping_range == pytest.approx(1.0 + 7 * 4.0 * 1.0 / 5**0.5)
    assert plan.min_cohort == 5


class _Connecting(StaticClients):
    """Devices that connect one at a time, one per look at the count."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.everyone, self.clients = self.clients, {}

    def num_available(self) -> int:
        if len(self.clients) < len(self.everyone):
            cid = sorted(self.everyone)[len(self.clients)]
            self.clients[cid] = self.everyone[cid]
        return len(self.clients)


def test_a_round_waits_for_the_whole_population_before_sampling() -> None:
    strategy = _strategy(UserDP(), cohort=5, population=50)
    early = _Connecting(50)
    cohort = strategy.configure_fit(1, ndarrays_to_parameters(zero_shared(N_ITEMS, DIM)), early)
    assert len(early.clients) == 50
    settled = strategy.configure_fit(
        1, ndarrays_to_parameters(zero_shared(N_ITEMS, DIM)), StaticClients(50)
    )
    assert [c.cid for c, _ in cohort] == [c.cid for c, _ in settled]


def test_too_few_devices_connecting_in_time_is_an_error() -> None:
    settings = ServerSettings(
        clients_per_round=5, connect_timeout=0.2, secagg=SecAggSettings(enabled=False)
    )
    initial = zero_shared(N_ITEMS, DIM)
    partial = FederatedAveraging(settings, initial=initial, population=50)
    # 8 and 3 of the 50 connected from the start (not one per look at the count, which
    # would make the outcome depend on how often a loaded machine looks in 0.2 s)
    cohort = partial.configure_fit(1, ndarrays_to_parameters(initial), StaticClients(8))
    assert len(cohort) == 5  # the population never arrived: sampled from the 8 there
    with pytest.raises(RuntimeError, match="only 3 devices connected within 0.2 s"):
        partial.configure_fit(1, ndarrays_to_parameters(initial), StaticClients(3))


def test_plain_mode_leaves_malformed_or_oversized_updates_out_of_the_mean() -> None:
    """Without SecAgg+ the server checks each update before the mean: wrong shapes,
    non-finite values and (central DP) norms above the clip norm are rejected, named by
    node, and the round goes on with the rest; with nothing left it fails."""
    clip, cohort = 0.5, 4
    strategy = _strategy(
        UserDP(mode="central", noise_multiplier=1.0, clip_norm=clip), cohort=cohort
    )
    zeros = zero_shared(N_ITEMS, DIM)
    strategy.configure_fit(1, ndarrays_to_parameters(zeros), StaticClients(50))
    good = [np.full_like(a, 0.01) for a in zeros]
    nan = [a.copy() for a in good]
    nan[1][3] = np.nan
    wrong = [good[0][:, :2], good[1]]
    big = [np.full_like(a, 1.0) for a in zeros]
    results = [
        (SimpleNamespace(cid=name), fit_res(arrays))
        for name, arrays in (("a", good), ("b", nan), ("c", wrong), ("d", big))
    ]
    strategy.aggregate_fit(1, results, [])  # type: ignore[arg-type]
    strategy.finish_round(1)
    record = strategy.history[-1]
    assert record.devices == 1 and record.failures == 3
    assert record.rejected is not None
    assert [r.split(":")[0] for r in record.rejected] == ["node b", "node c", "node d"]
    strategy.configure_fit(2, ndarrays_to_parameters(zeros), StaticClients(50))
    with pytest.raises(RuntimeError, match="every update was rejected"):
        strategy.aggregate_fit(2, results[1:], [])  # type: ignore[arg-type]


def test_a_device_refuses_to_send_a_broken_update() -> None:
    zeros = zero_shared(N_ITEMS, DIM)
    broken = [a.copy() for a in zeros]
    broken[0][0, 0] = np.inf
    request = Request(task=Task.MODEL, round=1, dp=DeviceDP(0.5, 0.0))
    with pytest.raises(ValueError, match="finite|NaN|inf"):
        check_upload(broken, zeros, request)
    with pytest.raises(ValueError, match="norm"):
        check_upload([np.ones_like(a) for a in zeros], zeros, request)
    noised = request.with_(dp=DeviceDP(0.5, 0.1))
    check_upload([np.ones_like(a) for a in zeros], zeros, noised)


def test_a_device_reports_its_loss_only_when_told_the_run_is_not_private() -> None:
    data = DeviceData(np.array([1, 2, 3]), release_catalog_of(N_ITEMS))
    config = Request(task=Task.MODEL, round=1, settings={"model": "mf", "dim": DIM}).to_config()
    del config["fit-metrics"]
    for setting, expected in ((None, set()), (False, set()), (True, {"train_loss"})):
        client = DeviceClient(data, {}, seed=0, row=0)  # type: ignore[arg-type]
        request = config if setting is None else {**config, "fit-metrics": setting}
        _, _, metrics = client.fit(zero_shared(N_ITEMS, DIM), request)
        assert set(metrics) == expected, setting


def test_a_run_resumes_only_under_the_same_dp_mechanism() -> None:
    """The accountant resumes by counting rounds, which is right only if every round used
    the same noise, clip and sampling rate: a resume with another target is refused."""
    from stamen.errors import CheckpointError
    from stamen.server.checkpoint import Checkpoint

    first = _strategy(UserDP(mode="central", target_epsilon=8.0, clip_norm=0.5), rounds=2)
    saved = Checkpoint(
        round=1, server_state=first.server.state_dict(), history=[], fingerprint=first.fingerprint
    )
    same = FederatedAveraging(
        first.settings, initial=zero_shared(N_ITEMS, DIM), resume=saved, population=first.population
    )
    assert same.start_round == 1 and same.accountant.epsilon == first.accountant.epsilon_after(1)
    wider = first.settings.model_copy(
        update={"rounds": 3, "dp": UserDP(mode="central", target_epsilon=12.0, clip_norm=0.5)}
    )
    with pytest.raises(CheckpointError, match="dp"):
        FederatedAveraging(
            wider, initial=zero_shared(N_ITEMS, DIM), resume=saved, population=first.population
        )
