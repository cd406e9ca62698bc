"""``--algorithm als --engine batched``: private ALS through ``private_als_rounds`` with the
run's accountant, evaluation schedule and round records, written as a Flower run writes
them. Flower against batched on one private ALS run: ``tests/integration/test_als_engines.py``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.private_als import ALS, als_config
from typer.testing import CliRunner

from stamen.models.als.layout import ALSLayout
from stamen.privacy import PrivacyAccountant
from stamen.server.als_strategy import FederatedALS
from stamen.simulation.baselines.private_als import run_private_als
from stamen.simulation.cli.commands import app
from stamen.simulation.config import load_config
from stamen.simulation.datasets import generate_synthetic
from stamen.simulation.engines.flower import initial_shared, release_catalog
from stamen.simulation.engines.registry import ENGINES, population_evaluation
from stamen.simulation.protocol.split import leave_one_out

USERS, ITEMS = 30, 300


@pytest.fixture(scope="module")
def split():
    return leave_one_out(generate_synthetic(USERS, ITEMS, seed=0).interactions, seed=0)


def test_a_private_run_writes_the_als_rounds_and_the_flower_paths_epsilon(tmp_path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        f"synthetic-users = {USERS}\nsynthetic-items = {ITEMS}\neval-every = 1\n"
        "[centralised]\nepochs = 1\n[als]\ndim = 4\nrounds = 2\nhead = 60\n"
    )
    out = tmp_path / "out"
    flags = ["--dataset", "synthetic", "--engine", "batched", "--algorithm", "als"]
    flags += ["--dp", "distributed", "--epsilon", "4", "--config", str(path)]
    result = CliRunner().invoke(app, ["simulate", *flags, "--output", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "results.json").read_text())
    assert record["engine"] == "batched" and record["federated"]["algorithm"] == "als"
    rounds = record["federated"]["rounds"]
    assert [(r["round"], r["stage"]) for r in rounds] == [
        (1, "counts"),
        (2, "statistics"),
        (3, "statistics"),
    ]
    assert all(r["cohort"] == r["devices"] == USERS and r["failures"] == 0 for r in rounds)
    head = ALSLayout(dim=4, head=np.arange(60), item_grams=False)
    assert [r["upload_bytes_per_device"] for r in rounds] == [8 * ITEMS, *[8 * head.size] * 2]
    # eval-every 1: every round, every evaluated device (the counts round: the public start)
    assert all(r["evaluate"]["full"] and r["evaluate"]["devices"] == USERS for r in rounds)
    assert record["federated"]["selected_round"] == 3  # a private run: the last round
    federated = record["methods"]["federated MF"]
    assert federated["ndcg@10"] == rounds[-1]["evaluate"]["ndcg@10"]

    privacy = record["privacy"]
    assert privacy["mode"] == "distributed" and privacy["rounds"] == 3
    assert privacy["sampling_rate"] == 1.0 and privacy["delta"] == pytest.approx(1 / USERS)
    epsilons = [r["privacy"]["epsilon"] for r in rounds]
    assert epsilons == sorted(epsilons) and epsilons[-1] == privacy["epsilon"] <= 4.0
    # the Flower path's strategy for the same settings: its multiplier and accountant
    config = load_config(path, {"dataset": "synthetic", "algorithm": "als",
                                "dp": {"mode": "distributed", "target_epsilon": 4.0}})  # fmt: skip
    settings = config.server_settings(USERS)
    strategy = FederatedALS(
        settings, config.als, initial=initial_shared(ITEMS, config), population=USERS
    )
    assert strategy.plan.mechanism is not None
    assert privacy["noise_multiplier"] == strategy.noise_multiplier > 0
    accountant = strategy.plan.mechanism.accountant
    assert privacy["epsilon"] == PrivacyAccountant(accountant.settings, rounds=3).epsilon
    assert "secure aggregation: the exact sum of private ALS's statistics" in result.output


def test_without_noise_the_stage_is_the_simulation_evaluated_on_its_schedule(
    split, tmp_path
) -> None:
    config = als_config(tmp_path, engine="batched", eval_every=1, secagg={"enabled": False})
    seen: list[int] = []
    fed = ENGINES["batched"].run(
        config, split, output=tmp_path, on_round=lambda record: seen.append(record.round)
    )
    assert seen == [1, 2, 3] and [h.round for h in fed.history] == seen
    assert fed.privacy is None and all(h.privacy is None for h in fed.history)
    simulated = run_private_als(
        split.train, config.als, epsilon=float("inf"), delta=1 / USERS, seed=config.seed
    )
    np.testing.assert_array_equal(fed.shared[0], simulated.items)
    np.testing.assert_array_equal(fed.shared[1], simulated.bias)
    settings = config.server_settings(USERS)
    model = config.run_model(release_catalog(split, None), USERS)
    evaluation = population_evaluation(model, split, settings, cutoffs=config.protocol.cutoffs)
    start = evaluation(initial_shared(split.n_items, config))
    assert fed.history[0].evaluate is not None and fed.history[-1].evaluate is not None
    assert fed.history[0].evaluate.metrics == start.metrics  # the counts leave the start
    assert fed.history[-1].evaluate.metrics == evaluation(fed.shared).metrics
    assert fed.history[-1].evaluate.metrics["ndcg@10"] != start.metrics["ndcg@10"]


def test_an_explicit_noise_multiplier_noises_the_releases(split, tmp_path) -> None:
    plain = als_config(tmp_path, engine="batched", secagg={"enabled": False})
    private = als_config(
        tmp_path,
        engine="batched",
        secagg={"enabled": False},
        dp={"mode": "central", "noise_multiplier": 2.0},
    )
    clean = ENGINES["batched"].run(plain, split, output=tmp_path)
    noisy = ENGINES["batched"].run(private, split, output=tmp_path)
    assert noisy.privacy is not None and noisy.privacy["noise_multiplier"] == 2.0
    assert noisy.privacy["mode"] == "central" and noisy.privacy["rounds"] == ALS["rounds"] + 1
    assert not np.allclose(noisy.shared[0], clean.shared[0], atol=1e-3)
    assert [h.evaluate is not None for h in noisy.history] == [False, False, True]
