"""The command line end to end on a small synthetic population: ``stamen simulate`` on
Flower's simulation engine, MF and the two-tower model (its error paths:
``tests/simulation/cli/test_cli.py``)."""

from __future__ import annotations

import json

import pytest
from helpers.tiny_simulation import tiny_config
from typer.testing import CliRunner

from stamen.models import ReleaseBundle
from stamen.models.registry import build_model
from stamen.privacy import open_signed
from stamen.server import latest_release
from stamen.simulation.cli.commands import app

pytestmark = pytest.mark.slow

runner = CliRunner()


def test_simulate_writes_table_results_and_plot(tmp_path) -> None:
    config = tiny_config(tmp_path, users=30, items=400, epochs=3, extra="eval-every = 1\n")
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "simulate",
            "--dataset",
            "synthetic",
            "--rounds",
            "2",
            "--clients-per-round",
            "5",
            "--seed",
            "1",
            "--config",
            str(config),
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "federated MF" in result.output and "centralised MF" in result.output
    # not a terminal: one plain line per federated round as it ends, not a bar at the end
    lines = result.output.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("round ")] == [
        "round 1/2",
        "round 2/2",
    ], result.output
    assert "round 2/2: cohort 5, 5 aggregated" in result.output and "NDCG@10" in result.output
    record = json.loads((out / "results.json").read_text())
    assert record["seed"] == 1 and record["config"]["rounds"] == 2
    assert set(record["methods"]) == {"popularity", "centralised MF", "federated MF"}
    rounds = record["federated"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    # SecAgg+ is on by default: each device uploads a masked int64 vector
    assert record["config"]["secagg"]["enabled"] is True
    assert record["privacy"]["secure_aggregation"]["num_shares"] == 5
    assert record["privacy"]["epsilon"] is None  # null: no user-level DP, ε = ∞
    assert record["privacy"]["mode"] == "off"
    assert "secure aggregation: Flower SecAgg+" in result.output
    assert all(r["upload_bytes_per_device"] == 400 * (8 + 1) * 8 for r in rounds)
    assert 0.0 <= record["methods"]["federated MF"]["ndcg@10"] <= 1.0
    assert (out / "metrics.png").stat().st_size > 1000
    assert (out / "negatives.npz").is_file()


@pytest.mark.parametrize(
    ("model", "section"),
    [
        ("two-tower", "[two-tower]\ndim = 8\nhidden = 16\nnegatives = 32\n"),
        ("sequential", "[sequential]\ndim = 8\nhidden = 16\nmax-history = 6\nnegatives = 32\n"),
    ],
)
def test_simulate_trains_a_neural_model_through_flower(tmp_path, model, section) -> None:
    """``--model two-tower`` and ``--model sequential`` reach every layer: the devices'
    step, SecAgg+, the federated evaluation, the releases and the results."""
    config = tmp_path / "tiny.toml"
    config.write_text(
        "synthetic-users = 30\nsynthetic-items = 400\neval-every = 1\n"
        + section
        + "[local]\ndim = 8\n[centralised]\nepochs = 2\n"
    )
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["simulate", "--dataset", "synthetic", "--model", model, "--rounds", "2"]
        + ["--clients-per-round", "5", "--config", str(config), "--output", str(out)],
    )
    assert result.exit_code == 0, result.output
    record = json.loads((out / "results.json").read_text())
    assert record["config"]["model"] == model
    reference = f"centralised {model}"  # its own family, trained centrally, beside MF
    assert set(record["methods"]) == {
        "popularity",
        "centralised MF",
        reference,
        f"federated {model}",
    }
    assert record["federated"]["centralised_baseline"] == reference
    assert f"federated {model} / {reference} NDCG@10" in result.output
    assert record["centralised"]["reference"]["rounds"] == 2
    rounds = record["federated"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["devices"] >= 5 and not r.get("failures") for r in rounds)
    bundle = ReleaseBundle.decode(
        open_signed(
            latest_release(out / "releases").read_bytes(),
            public_key=(out / "releases" / "release.pub").read_bytes(),
        )
    )
    assert bundle.release == 2 and bundle.model == model
    built = build_model(model, bundle.settings, bundle.catalog)
    assert bundle.names == built.shared_names()
    values = sum(a.size for a in bundle.shared_arrays())
    assert all(r["upload_bytes_per_device"] == values * 8 for r in rounds)  # SecAgg+ int64
    assert 0.0 <= record["methods"][f"federated {model}"]["ndcg@10"] <= 1.0
