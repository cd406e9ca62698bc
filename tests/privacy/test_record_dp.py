"""Record-level DP-SGD on the device (Opacus ghost clipping), its accounting, and its
wiring through the client, the strategy and the configuration (no Flower simulation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.common import ndarrays_to_parameters
from helpers.static_clients import StaticClients
from helpers.updates import mf_shared, zero_shared
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from typer.testing import CliRunner

from stamen.client.flower import record_dp as record_dp_module
from stamen.client.flower.app import USER_STATE_KEY, DeviceClient, DeviceData
from stamen.client.flower.record_dp import record_dp_update
from stamen.models.batches import UserItems
from stamen.models.mf.local import build_local_model
from stamen.models.mf.settings import LocalSettings
from stamen.models.wire import Request, Task
from stamen.privacy import RecordDP, SecAggSettings, UserDP, record_epsilon, update_norm
from stamen.server.checkpoint import Checkpoint
from stamen.server.rounds import RecordPrivacy, RoundRecord
from stamen.server.settings import ServerSettings
from stamen.server.strategy import FederatedAveraging
from stamen.simulation import experiment
from stamen.simulation.cli.commands import app
from stamen.simulation.config import load_config
from stamen.simulation.engines.flower import release_catalog_of
from stamen.simulation.protocol.device_evaluation import HeldOut, evaluate_tasks

N_ITEMS, DIM = 300, 8


def _server(**kw) -> ServerSettings:
    """Server settings with SecAgg+ off (it needs larger cohorts and is not under test)."""
    return ServerSettings(secagg=SecAggSettings(enabled=False), **kw)


def _settings(**kw) -> LocalSettings:
    return LocalSettings(dim=DIM, **kw)


def _record_loss(shared: list[np.ndarray], factor: np.ndarray, items: np.ndarray) -> float:
    logits = torch.as_tensor(factor) @ torch.as_tensor(shared[0]).T + torch.as_tensor(shared[1])
    return float(torch.logsumexp(logits, 0) - logits[torch.as_tensor(items)].mean())


# (a) the step: shapes, reproducibility, user factor from DP-SGD only, it learns


def test_step_returns_dense_shared_deltas_and_is_seeded() -> None:
    shared = mf_shared(N_ITEMS, DIM)
    items = np.array([3, 17, 42, 250])
    rdp = RecordDP(enabled=True, sample_rate=0.5, steps_per_round=4)
    run = [
        record_dp_update(
            shared,
            None,
            items=items,
            settings=_settings(),
            record_dp=rdp,
            rng=np.random.default_rng(seed),
        )
        for seed in (7, 7, 8)
    ]
    first = run[0]
    assert [d.shape for d in first.delta] == [(N_ITEMS, DIM), (N_ITEMS,)]
    assert all(d.dtype == np.float32 for d in first.delta)
    assert first.user_factor.shape == (DIM,) and set(first.metrics) == {"train_loss"}
    # noise reaches every item row, touched or not: the update's support hides the items
    assert np.count_nonzero(first.delta[1]) == N_ITEMS
    assert all(np.array_equal(a, b) for a, b in zip(first.delta, run[1].delta, strict=True))
    assert np.array_equal(first.user_factor, run[1].user_factor)
    assert not np.array_equal(first.delta[0], run[2].delta[0])


def test_user_factor_starts_from_the_stored_one_never_from_the_exact_solve() -> None:
    shared = mf_shared(N_ITEMS, DIM)
    items = np.arange(0, 300, 7)
    stored = np.random.default_rng(1).normal(0, 0.1, DIM).astype(np.float32)
    rdp = RecordDP(enabled=True, noise_multiplier=1e-6, sample_rate=1.0, steps_per_round=1)
    result = record_dp_update(
        shared,
        stored,
        items=items,
        settings=_settings(local_lr=1e-6),
        record_dp=rdp,
        rng=np.random.default_rng(0),
    )
    np.testing.assert_allclose(result.user_factor, stored, atol=1e-4)
    solved = build_local_model(
        shared,
        stored,
        settings=_settings(),
        items=UserItems.single(items, n_items=N_ITEMS),
        rng=np.random.default_rng(0),
    )
    exact = solved.users.weight.detach()[0].numpy()
    assert np.linalg.norm(exact - stored) > 100 * np.linalg.norm(result.user_factor - stored)


def test_nearly_noiseless_steps_lower_the_records_loss() -> None:
    shared = mf_shared(N_ITEMS, DIM)
    items = np.array([5, 6, 7, 8, 9, 10])
    start = np.random.default_rng(2).normal(0, 0.1, DIM).astype(np.float32)
    rdp = RecordDP(
        enabled=True, noise_multiplier=1e-6, max_grad_norm=10.0, sample_rate=0.5, steps_per_round=30
    )
    result = record_dp_update(
        shared,
        start,
        items=items,
        settings=_settings(local_lr=0.5),
        record_dp=rdp,
        rng=np.random.default_rng(0),
    )
    before = _record_loss(shared, start, items)
    after_shared = [s + d for s, d in zip(shared, result.delta, strict=True)]
    after = _record_loss(after_shared, result.user_factor, items)
    assert after < 0.5 * before
    assert result.metrics["train_loss"] == pytest.approx(after, rel=1e-4)


def test_count_dependent_update_weighting_is_refused() -> None:
    with pytest.raises(ValueError, match="uniform"):
        record_dp_update(
            mf_shared(N_ITEMS, DIM),
            None,
            items=np.array([1]),
            settings=_settings(update_weighting="positives"),
            record_dp=RecordDP(enabled=True),
            rng=np.random.default_rng(0),
        )
    with pytest.raises(ValueError, match="uniform"):
        _server(
            record_dp=RecordDP(enabled=True),
            local=LocalSettings(update_weighting="positives"),
        )


# (b) per-record clipping is in effect


def test_one_step_moves_the_model_by_at_most_lr_times_the_clip_norm() -> None:
    shared = mf_shared(N_ITEMS, DIM)
    item, lr, clip = 11, 1.0, 1e-3
    start = np.random.default_rng(3).normal(0, 0.1, DIM).astype(np.float32)
    # the record's own gradient is far larger than the clip norm
    model = build_local_model(
        shared,
        start,
        settings=_settings(),
        items=UserItems.single(np.array([item]), n_items=N_ITEMS),
        rng=np.random.default_rng(0),
        refit=False,
    )
    loss = F.cross_entropy(
        model.logits(model(torch.zeros(1, dtype=torch.long))), torch.tensor([item])
    )
    loss.backward()
    raw = float(torch.sqrt(sum((p.grad**2).sum() for p in model.parameters())))
    assert raw > 100 * clip
    # one Poisson step that surely holds the record (q = 1), with negligible noise
    rdp = RecordDP(
        enabled=True,
        noise_multiplier=1e-9,
        max_grad_norm=clip,
        sample_rate=1.0,
        steps_per_round=1,
    )
    result = record_dp_update(
        shared,
        start,
        items=np.array([item]),
        settings=_settings(local_lr=lr),
        record_dp=rdp,
        rng=np.random.default_rng(0),
    )
    moved = update_norm([*result.delta, result.user_factor - start])
    assert moved <= lr * clip * (1 + 1e-3)
    assert moved >= 0.99 * lr * clip  # clipped to C, not vanished


# (c) accounting matches Opacus and composes over participations


@pytest.mark.parametrize(("z", "q"), [(1.0, 0.05), (0.8, 0.2), (2.0, 0.01)])
def test_record_epsilon_is_opacus_rdp_over_steps_times_participations(z: float, q: float) -> None:
    rdp = RecordDP(enabled=True, noise_multiplier=z, sample_rate=q, delta=1e-5)
    assert rdp.steps_per_round == round(1 / q)
    epsilons = [record_epsilon(rdp, n) for n in (0, 1, 2, 5)]
    assert epsilons[0] == 0.0
    assert epsilons[1] < epsilons[2] < epsilons[3]
    opacus = RDPAccountant()
    opacus.history = [(z, q, rdp.steps_per_round * 5)]
    assert epsilons[3] == pytest.approx(opacus.get_epsilon(delta=1e-5), rel=1e-9)


def test_settings_round_trip_through_a_flower_config_and_validate() -> None:
    rdp = RecordDP(enabled=True, noise_multiplier=1.3, max_grad_norm=0.7, sample_rate=0.1)
    config = {"server-round": 3, "dim": 8, **rdp.to_config()}
    assert config["record-dp-noise-multiplier"] == 1.3 and config["record-dp-steps-per-round"] == 10
    parsed = RecordDP.from_config(config)
    assert parsed is not None and parsed.model_dump() == {**rdp.model_dump()}
    assert RecordDP.from_config({"server-round": 3}) is None
    with pytest.raises(ValueError, match="noise_multiplier"):
        RecordDP(enabled=True, noise_multiplier=0.0)
    with pytest.raises(ValueError, match="unknown accountant"):
        RecordDP(accountant="moments")


# (d) ε and the mechanism do not depend on how many records a device holds


@pytest.mark.parametrize("n_records", [3, 60, 2000])
def test_poisson_rate_and_steps_come_from_the_config_not_the_data(monkeypatch, n_records) -> None:
    seen = []

    class Recording(record_dp_module.UniformWithReplacementSampler):
        def __iter__(self):
            for batch in super().__iter__():
                seen.append(len(batch))
                yield batch

    captured = {}
    original = Recording.__init__

    def init(self, **kw) -> None:
        captured.update(kw)
        original(self, **kw)

    monkeypatch.setattr(Recording, "__init__", init)
    monkeypatch.setattr(record_dp_module, "UniformWithReplacementSampler", Recording)
    rdp = RecordDP(enabled=True, sample_rate=0.05, steps_per_round=40)
    items = np.random.default_rng(0).integers(0, N_ITEMS, n_records)
    record_dp_update(
        mf_shared(N_ITEMS, DIM),
        None,
        items=items,
        settings=_settings(),
        record_dp=rdp,
        rng=np.random.default_rng(0),
    )
    assert captured["sample_rate"] == 0.05 and captured["steps"] == 40
    assert captured["num_samples"] == n_records and len(seen) == 40
    if n_records == 2000:  # the batches really are Poisson at rate q (mean 100, sd 1.5)
        assert np.mean(seen) == pytest.approx(0.05 * n_records, rel=0.05)


def test_a_device_without_records_still_releases_calibrated_noise() -> None:
    lr, z, clip, steps = 0.1, 1.5, 0.4, 9
    rdp = RecordDP(
        enabled=True, noise_multiplier=z, max_grad_norm=clip, sample_rate=0.1, steps_per_round=steps
    )
    shared = mf_shared(2000, DIM)
    result = record_dp_update(
        shared,
        None,
        items=np.array([], dtype=np.int64),
        settings=_settings(local_lr=lr),
        record_dp=rdp,
        rng=np.random.default_rng(0),
    )
    noise = np.concatenate([d.ravel() for d in result.delta])
    assert noise.std() == pytest.approx(lr * z * clip * np.sqrt(steps), rel=0.03)
    assert result.metrics["train_loss"] == 0.0


# (e) a large catalogue in ghost mode


def test_ten_thousand_items_by_64_run_one_round_in_ghost_mode(monkeypatch) -> None:
    made = []
    make_private = PrivacyEngine.make_private

    def spy(self, **kw):
        out = make_private(self, **kw)
        made.append((kw, out))
        return out

    monkeypatch.setattr(PrivacyEngine, "make_private", spy)
    shared = mf_shared(10_000, 64)
    items = np.random.default_rng(0).choice(10_000, 400, replace=False)
    result = record_dp_update(
        shared,
        None,
        items=items,
        settings=LocalSettings(dim=64),
        record_dp=RecordDP(enabled=True, sample_rate=0.05),
        rng=np.random.default_rng(0),
    )
    assert [d.shape for d in result.delta] == [(10_000, 64), (10_000,)]
    assert all(np.all(np.isfinite(d)) for d in result.delta)
    ((kw, (module, *_)),) = made
    assert kw["grad_sample_mode"] == "ghost"
    assert isinstance(module, GradSampleModuleFastGradientClipping)
    # ghost clipping never materialises per-record gradients of the item table
    assert all(getattr(p, "grad_sample", None) is None for p in module.parameters())


# (f) the strategy sends the settings, counts participations and reports a separate ε


def test_strategy_reports_record_epsilon_of_the_most_sampled_device() -> None:
    rdp = RecordDP(enabled=True, noise_multiplier=1.1, max_grad_norm=0.5, sample_rate=0.1)
    settings = _server(rounds=6, clients_per_round=4, record_dp=rdp)
    strategy = FederatedAveraging(settings, initial=zero_shared(50, 4), population=20)
    clients = StaticClients(20)
    counts: dict[str, int] = {}
    for rnd in range(1, 7):
        instructions = strategy.configure_fit(
            rnd, ndarrays_to_parameters(zero_shared(50, 4)), clients
        )
        for proxy, ins in instructions:
            counts[proxy.cid] = counts.get(proxy.cid, 0) + 1
            assert ins.config["record-dp-sample-rate"] == 0.1
            assert ins.config["record-dp-steps-per-round"] == 10
        strategy.finish_round(rnd)  # no aggregate: the round's record as it stands
        entry = strategy.history[-1].record_privacy
        assert entry is not None and entry.max_participations == max(counts.values())
    most = max(counts.values())
    assert 1 < most < 6 and strategy.max_participations == most
    report = strategy.privacy_report()
    assert report is not None and report["mode"] == "off"
    record = report["record"]
    assert record["unit"] == "record" and record["max_participations"] == most
    opacus = RDPAccountant()
    opacus.history = [(1.1, 0.1, 10 * most)]
    assert record["epsilon"] == pytest.approx(opacus.get_epsilon(delta=rdp.delta))
    assert {k: record[k] for k in ("delta", "noise_multiplier", "max_grad_norm")} == {
        "delta": 1e-5,
        "noise_multiplier": 1.1,
        "max_grad_norm": 0.5,
    }
    assert record["sample_rate"] == 0.1 and record["steps_per_round"] == 10
    assert record["accountant"] == "rdp"


def test_user_level_report_is_unchanged_beside_the_record_entry() -> None:
    dp = UserDP(mode="central", noise_multiplier=1.0, clip_norm=1.0)
    plain = FederatedAveraging(
        _server(rounds=3, clients_per_round=4, dp=dp), initial=zero_shared(50, 4), population=20
    )
    both = FederatedAveraging(
        _server(rounds=3, clients_per_round=4, dp=dp, record_dp=RecordDP(enabled=True)),
        initial=zero_shared(50, 4),
        population=20,
    )
    report = both.privacy_report()
    assert report is not None and set(report) == {*plain.privacy_report(), "record"}  # type: ignore[misc]
    assert {k: v for k, v in report.items() if k != "record"} == plain.privacy_report()
    assert "record-dp-noise-multiplier" not in plain.request(1).to_config()
    assert FederatedAveraging(_server(), initial=zero_shared(50, 4)).privacy_report() is None


def test_resumed_strategy_carries_the_earlier_participations() -> None:
    settings = _server(rounds=4, clients_per_round=2, record_dp=RecordDP(enabled=True))
    first = FederatedAveraging(settings, initial=zero_shared(50, 4))
    history = [
        RoundRecord(round=1, record_privacy=RecordPrivacy(epsilon=1.0, max_participations=3))
    ]
    resume = Checkpoint(
        round=1, server_state=first.server.state_dict(), history=history, fingerprint={}
    )
    resumed = FederatedAveraging(settings, initial=zero_shared(50, 4), resume=resume)
    assert resumed.max_participations == 3
    resumed.configure_fit(1, ndarrays_to_parameters(zero_shared(50, 4)), StaticClients(4))
    # an upper bound: the earlier maximum plus this run's most-sampled device
    assert resumed.max_participations == 4
    assert resumed.privacy_report()["record"]["epsilon"] == pytest.approx(  # type: ignore[index]
        record_epsilon(settings.record_dp, 4)
    )


# the device and the configuration edge


def test_device_trains_by_dp_sgd_and_keeps_only_that_factor() -> None:
    data = DeviceData(np.array([1, 2, 3, 9]), release_catalog_of(N_ITEMS))
    state: dict = {}
    tasks = evaluate_tasks(lambda row: HeldOut(np.array([4]), np.array([5]), np.arange(10, 20)))
    client = DeviceClient(data, state, seed=0, row=2, evaluate_tasks=tasks)  # type: ignore[arg-type]
    rdp = RecordDP(enabled=True, sample_rate=0.5, steps_per_round=3)
    config = Request(
        task=Task.MODEL,
        round=1,
        settings={**_settings().to_config(), **rdp.to_config()},
        report_loss=True,  # to compare the loss (a private run's server says False)
    ).to_config()
    shared = mf_shared(N_ITEMS, DIM)
    delta, _, metrics = client.fit(shared, config)
    expected = record_dp_update(
        shared,
        None,
        items=data.train_items,
        settings=_settings(),
        record_dp=rdp,
        rng=np.random.default_rng([0, 2, 1, 0]),
    )
    assert all(np.array_equal(a, b) for a, b in zip(delta, expected.delta, strict=True))
    assert metrics["train_loss"] == pytest.approx(expected.metrics["train_loss"])
    kept = state[USER_STATE_KEY].to_numpy_ndarrays()[0]
    assert np.array_equal(kept, expected.user_factor)
    client.evaluate(shared, {**config, "server-round": 2})  # re-fits for ranking only
    assert np.array_equal(state[USER_STATE_KEY].to_numpy_ndarrays()[0], kept)
    no_dp = {k: v for k, v in config.items() if not k.startswith("record-dp-")}
    client.evaluate(shared, {**no_dp, "server-round": 2})
    assert not np.array_equal(state[USER_STATE_KEY].to_numpy_ndarrays()[0], kept)


def test_toml_section_and_cli_flags_reach_the_server_settings(tmp_path, monkeypatch) -> None:
    path = tmp_path / "run.toml"
    path.write_text("[record-dp]\nenabled = true\nnoise-multiplier = 0.9\nsample-rate = 0.02\n")
    config = load_config(path)
    assert config.record_dp == RecordDP(enabled=True, noise_multiplier=0.9, sample_rate=0.02)
    assert config.server_settings(100).record_dp.steps_per_round == 50
    seen = []
    monkeypatch.setattr(experiment, "run_experiment", lambda settings, **_: seen.append(settings))
    result = CliRunner().invoke(
        app, ["simulate", "--record-dp-noise", "1.2", "--record-dp-rate", "0.25"]
    )
    assert result.exit_code == 0, result.output
    (settings,) = seen
    assert settings.record_dp == RecordDP(enabled=True, noise_multiplier=1.2, sample_rate=0.25)
    assert settings.record_dp.steps_per_round == 4
