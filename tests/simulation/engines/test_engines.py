"""``engine = "batched"``: ``stamen simulate``'s federated stage on the batched engine. It
is chosen only when asked (Flower stays the default), refuses what it does not run with
one error naming every such setting, evaluates the population as the devices evaluate
themselves, and writes the same results file. Flower against batched on one run:
``tests/integration/test_engines.py``."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from flwr.common import Code, EvaluateRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from helpers.static_clients import StaticClients
from helpers.tiny_simulation import tiny_config
from helpers.updates import fit_res
from rich.console import Console
from typer.testing import CliRunner

from stamen.client.flower.app import DeviceClient, DeviceData
from stamen.models import ConfigError
from stamen.server.analytics import evaluation_metrics
from stamen.server.strategy import FederatedAveraging
from stamen.simulation.cli.commands import app
from stamen.simulation.config import load_config
from stamen.simulation.datasets import generate_synthetic
from stamen.simulation.engines.flower import initial_shared, release_catalog
from stamen.simulation.engines.registry import ENGINES, population_evaluation
from stamen.simulation.experiment import run_experiment
from stamen.simulation.protocol.device_evaluation import HeldOut, evaluate_tasks
from stamen.simulation.protocol.split import leave_one_out, ratio_split


def test_flower_is_the_default_engine_and_batched_is_asked_for_by_name() -> None:
    assert load_config().engine == "flower"
    assert load_config(None, {"engine": "batched"}).engine == "batched"
    assert set(ENGINES) == {"flower", "batched"}
    with pytest.raises(ConfigError, match="engine: Input should be 'flower' or 'batched'"):
        load_config(None, {"engine": "fast"})


def test_flwr_run_has_no_engine_key() -> None:
    from stamen.simulation.engines.flwr_app import config_from_run_config

    with pytest.raises(ConfigError, match="engine: unknown key"):
        config_from_run_config({"engine": "batched"})


def test_the_batched_engine_names_every_setting_it_does_not_run(tmp_path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        'engine = "batched"\neval-clients = 5\nresume = true\n[local]\nloss = "bpr"\n'
        "[record-dp]\nenabled = true\n[ranker]\nrounds = 2\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: engine 'batched' does not run ")
    for named in (
        "model 'mf' with local.loss 'bpr'",
        "record-level DP-SGD",
        "ranker.rounds 2",
        "eval-clients 5",
        "resume",
    ):
        assert named in message, named
    assert "It runs algorithm 'fedavg' with model 'mf'" in message
    assert "use engine 'flower' for the rest" in message
    with pytest.raises(ConfigError, match="does not run ranker.rounds 2"):
        load_config(None, {"engine": "batched", "algorithm": "als", "ranker": {"rounds": 2}})
    with pytest.raises(ConfigError, match="does not run analytics.trending.every 4"):
        load_config(None, {"engine": "batched", "analytics": {"trending": {"every": 4}}})
    # the same settings on Flower's engine are fine, and so is DP on the batched one
    assert load_config(None, {"algorithm": "als"}).engine == "flower"
    # private ALS fixes its device step: MF's [local] step is not the batched engine's concern
    als = {"engine": "batched", "algorithm": "als", "local": {"loss": "bpr"}}
    assert load_config(None, als).algorithm == "als"
    private = {"dp": {"mode": "distributed", "noise_multiplier": 1.0}, "engine": "batched"}
    assert load_config(None, private).dp.mode == "distributed"
    assert load_config(None, {"engine": "batched", "model": "two-tower"}).model == "two-tower"


def test_the_command_line_refuses_an_unsupported_combination_with_exit_2() -> None:
    result = CliRunner().invoke(
        app, ["simulate", "--dataset", "synthetic", "--engine", "batched", "--resume"]
    )
    assert result.exit_code == 2
    assert "engine 'batched' does not run resume" in result.output


@pytest.mark.parametrize(
    ("model", "cutoffs", "test_ratio"),
    [
        ("mf", (10, 20), None),
        ("two-tower", (10, 20), None),
        ("sequential", (10, 20), None),
        ("mf", (5, 10, 50), None),
        ("mf", (10, 20), 0.2),
    ],
)
def test_the_population_is_evaluated_as_the_strategy_evaluates_its_devices(
    model: str, cutoffs: tuple[int, ...], test_ratio: float | None
) -> None:
    """Every device answering the strategy's evaluation request in process, aggregated by
    ``FederatedAveraging.aggregate_evaluate``, gives the batched evaluation's metrics, at
    the protocol's cut-offs, under leave-one-out and a ratio split (up to 27 test items a
    device)."""
    interactions = generate_synthetic(30, 400, seed=2).interactions
    split = (
        leave_one_out(interactions, seed=0)
        if test_ratio is None
        else ratio_split(interactions, test_ratio=test_ratio, seed=0)
    )
    config = load_config(
        None,
        {
            "dataset": "synthetic",
            "engine": "batched",
            "model": model,
            "rounds": 1,
            "clients_per_round": 6,
            "seed": 3,
            "secagg": {"enabled": False},
            "local": {"dim": 4},
            "two_tower": {"dim": 4, "hidden": 8, "negatives": 16},
            "sequential": {"dim": 4, "hidden": 8, "max_history": 5, "negatives": 16},
            "protocol": {"cutoffs": cutoffs},
        },
    )
    settings = config.server_settings(split.n_users)
    catalog = release_catalog(split, None)
    initial = initial_shared(split.n_items, config, catalog)
    strategy = FederatedAveraging(settings, initial=initial, population=split.n_users)
    clients = StaticClients(split.n_users, shuffle=1)
    tasks = evaluate_tasks(lambda row: HeldOut.of(split, row), cutoffs=cutoffs)

    def device(row: int) -> DeviceClient:
        data = DeviceData(split.train.row(row), catalog)
        return DeviceClient(data, {}, seed=config.seed, row=row, evaluate_tasks=tasks)  # type: ignore[arg-type]

    parameters = ndarrays_to_parameters(initial)
    fits = []
    for proxy, ins in strategy.configure_fit(1, parameters, clients):  # type: ignore[arg-type]
        sent = parameters_to_ndarrays(ins.parameters)
        fits.append((proxy, fit_res(device(proxy.device).fit(sent, ins.config)[0])))
    parameters, _ = strategy.aggregate_fit(1, fits, [])  # type: ignore[arg-type,assignment]
    answers = []
    for proxy, ins in strategy.configure_evaluate(1, parameters, clients):  # type: ignore[arg-type]
        loss, n, metrics = device(proxy.device).evaluate(
            parameters_to_ndarrays(ins.parameters), ins.config
        )
        answers.append((proxy, EvaluateRes(Status(Code.OK, ""), loss, n, metrics)))
    assert len(answers) == split.n_users
    strategy.aggregate_evaluate(1, answers, [])  # type: ignore[arg-type]
    flower = strategy.history[-1].evaluate
    assert flower is not None

    model_ = config.run_model(catalog, split.n_users)
    shared = parameters_to_ndarrays(parameters)
    batched = population_evaluation(model_, split, settings, cutoffs=cutoffs)(shared)
    assert batched.devices == flower.devices == len(split.evaluated) and batched.full
    assert set(batched.metrics) == set(flower.metrics) == {*evaluation_metrics(cutoffs), "loss"}
    for name, value in flower.metrics.items():
        assert batched.metrics[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    assert flower.metrics["sampled_hr@10"] > 0 and flower.metrics["loss"] > 0


def _run(tmp_path, *flags: str, seed: int = 1, extra: str = "") -> tuple[dict, str]:
    config = tiny_config(tmp_path, users=40, items=400, epochs=2, extra=extra)
    overrides = ["--dataset", "synthetic", "--engine", "batched", "--seed", str(seed)]
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["simulate", *overrides, *flags, "--config", str(config), "--output", str(out)],
    )
    assert result.exit_code == 0, result.output
    return json.loads((out / "results.json").read_text()), result.output


def test_a_batched_run_writes_the_complete_results_file(tmp_path) -> None:
    record, output = _run(
        tmp_path, "--rounds", "4", "--clients-per-round", "6", extra="eval-every = 2\n"
    )
    assert record["engine"] == "batched" and record["config"]["engine"] == "batched"
    assert set(record["methods"]) == {"popularity", "centralised MF", "federated MF"}
    rounds = record["federated"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    assert all(r["cohort"] == r["devices"] == 6 for r in rounds)
    evaluated = [r["round"] for r in rounds if "evaluate" in r]
    assert evaluated == [2, 4] and record["federated"]["selected_round"] in evaluated
    chosen = next(r for r in rounds if r["round"] == record["federated"]["selected_round"])
    assert chosen["evaluate"]["full"] and chosen["evaluate"]["devices"] == 40
    federated = record["methods"]["federated MF"]
    assert federated["ndcg@10"] == chosen["evaluate"]["ndcg@10"] > 0
    assert "loss" not in chosen["evaluate"]  # a secure evaluation's metrics, as on Flower
    assert record["privacy"]["mode"] == "off" and record["privacy"]["epsilon"] is None
    assert record["privacy"]["secure_aggregation"]["enabled"] is True
    assert record["wall_seconds"]["federated"] > 0
    assert (tmp_path / "out" / "metrics.png").stat().st_size > 1000
    assert not (tmp_path / "out" / "releases").exists()  # no releases, stores, checkpoints
    # off a terminal: one plain line per round as it ends
    lines = [line for line in output.splitlines() if line.startswith("round ")]
    assert [line.split(":")[0] for line in lines] == [f"round {r}/4" for r in range(1, 5)]
    assert "round 2/4: cohort 6, 6 aggregated" in output and "NDCG@10" in lines[1]
    assert "replayed by the batched engine" in output


def test_a_run_reports_every_metric_at_the_protocols_cut_offs(tmp_path) -> None:
    record, output = _run(
        tmp_path,
        "--rounds",
        "2",
        "--clients-per-round",
        "6",
        extra="eval-every = 1\n[protocol]\ncutoffs = [5, 10, 50]\n",
    )
    assert record["protocol"]["cutoffs"] == [5, 10, 50]
    for method, metrics in record["methods"].items():
        at_k = {name.partition("@")[2] for name in metrics if "@" in name}
        assert at_k == {"5", "10", "50"}, method
    federated = record["methods"]["federated MF"]
    # the devices' own evaluation of the last round, as the same model scored offline
    for name in ("hr@5", "ndcg@50", "sampled_ndcg@5"):
        assert federated[name] == pytest.approx(record["federated"]["offline_check"][name])
    assert "NDCG@5" in output and "NDCG@50" in output and "Cov@5" in output
    assert "NDCG@20" not in output


def test_a_private_run_whose_last_rounds_are_skipped_still_evaluates_and_reports(
    tmp_path,
) -> None:
    """Poisson cohorts below SecAgg+'s five shares skip rounds 2 and 3 (seed 2); the last
    round still evaluates on its schedule, as on Flower, so the run reports it."""
    record, output = _run(
        tmp_path,
        "--rounds",
        "3",
        "--clients-per-round",
        "8",
        "--dp",
        "central",
        "--noise-multiplier",
        "0.5",
        "--clip-norm",
        "0.5",
        seed=2,
        extra="eval-every = 0\n",
    )
    rounds = record["federated"]["rounds"]
    assert [r.get("skipped", "")[:17] for r in rounds] == ["", *["Poisson cohort of"] * 2]
    assert record["federated"]["selected_round"] == 3 and rounds[2]["evaluate"]["full"]
    privacy = record["privacy"]
    assert privacy["mode"] == "central" and privacy["rounds"] == 3 and privacy["clip_norm"] == 0.5
    assert privacy["epsilon"] > 0
    assert rounds[-1]["privacy"]["epsilon"] == pytest.approx(privacy["epsilon"])
    assert "loss" not in rounds[-1]["evaluate"]  # SecAgg+ on: a secure evaluation's metrics
    assert any(name.startswith("DP popularity") for name in record["methods"])
    assert "round 3/3: skipped (Poisson cohort of 4 devices" in output


def test_a_plain_evaluation_adds_the_mean_loss(tmp_path) -> None:
    record, _ = _run(
        tmp_path, "--rounds", "2", "--clients-per-round", "5", "--no-secure-aggregation"
    )
    evaluation = record["federated"]["rounds"][-1]["evaluate"]
    assert evaluation["loss"] > 0 and "loss" in record["methods"]["federated MF"]


def test_on_a_terminal_the_batched_rounds_move_the_progress_bar(tmp_path) -> None:
    tiny_config(tmp_path, users=30, items=400, epochs=1)
    config = load_config(
        tmp_path / "tiny.toml",
        {"dataset": "synthetic", "engine": "batched", "rounds": 2, "clients_per_round": 5,
         "output": tmp_path / "out"},
    )  # fmt: skip
    out = io.StringIO()
    result = run_experiment(config, console=Console(file=out, force_terminal=True, width=160))
    assert "round 1/2" not in out.getvalue() and "federated rounds" in out.getvalue()
    assert result.results["engine"] == "batched"
    assert np.isfinite(result.results["methods"]["federated MF"]["ndcg@10"])
