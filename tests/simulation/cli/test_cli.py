"""The ``stamen simulate`` command's error paths: bad settings, and a missing data set, which
is an error (exit 2), never synthetic data instead (the command end to end on Flower's
simulation engine: ``tests/integration/test_simulate_cli.py``)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from stamen.errors import DataError
from stamen.simulation import experiment
from stamen.simulation.cli.commands import app
from stamen.simulation.config import load_config
from stamen.simulation.datasets import registry

runner = CliRunner()


def test_bad_settings_exit_with_a_message(tmp_path) -> None:
    result = runner.invoke(app, ["simulate", "--rounds", "0", "--output", str(tmp_path)])
    assert result.exit_code == 2
    assert "rounds" in result.output
    # every problem at once, the flags and the file's keys named as written
    config = tmp_path / "run.toml"
    config.write_text("[secagg]\nnum-sharez = 5\n")
    result = runner.invoke(
        app,
        ["simulate", "--rounds", "0", "--clients-per-round", "1", "--config", str(config)]
        + ["--epsilon", "-1", "--dp", "central"],
        env={"COLUMNS": "400"},
    )
    assert result.exit_code == 2
    for problem in (
        "4 problems:",
        "command line: --rounds: Input should be greater than or equal to 1",
        "command line: --clients-per-round: Input should be greater than or equal to 2",
        "command line: --epsilon: Input should be greater than 0",
        f"{config}: secagg.num-sharez: unknown key",
    ):
        assert problem in result.output, result.output


def test_a_missing_data_set_is_an_error_saying_where_it_looked(tmp_path, monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(registry, "ensure_archive", offline)
    config = load_config(None, {"dataset": "ml-100k", "data_dir": str(tmp_path / "data")})
    with pytest.raises(DataError) as err:
        experiment.load_data(config, say=lambda line: None)
    message = str(err.value)
    for part in (
        "data set 'ml-100k' not found",
        f"no folder 'ml-100k' under {tmp_path / 'data'}",
        "network unreachable",
        "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        "--dataset synthetic",
        "--data FILE",
    ):
        assert part in message, message
    # the command: exit 2 with that message, no training, no output folder, no synthetic data
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["simulate", "--dataset", "ml-100k", "--data-dir", str(tmp_path), "--output", str(out)]
    )
    assert result.exit_code == 2, result.output
    assert "not found" in result.output and "synthetic (generated)" not in result.output
    assert not out.exists()


def test_synthetic_data_only_when_asked() -> None:
    config = load_config(
        None, {"dataset": "synthetic", "synthetic_users": 20, "synthetic_items": 150}
    )
    loaded = experiment.load_data(config, say=lambda line: None)
    assert loaded.dataset.name == "synthetic" and loaded.source == "synthetic (generated)"
    assert load_config().dataset == "ml-100k"  # the default names a real data set
