"""The ``stamen simulate`` command's error paths and its fallback to synthetic data (the
command end to end on Flower's simulation engine: ``tests/integration/test_simulate_cli.py``)."""

from __future__ import annotations

from typer.testing import CliRunner

from stamen.simulation import experiment
from stamen.simulation.cli.commands import app
from stamen.simulation.config import load_config

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


def test_missing_data_without_network_falls_back_to_synthetic(tmp_path, monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(experiment, "load_dataset", offline)
    said: list[str] = []
    config = load_config(
        None,
        {
            "dataset": "ml-100k",
            "data_dir": str(tmp_path),
            "synthetic_users": 20,
            "synthetic_items": 150,
        },
    )
    data, source = experiment.load_for_config(config, say=said.append)
    assert data.name == "synthetic" and "fallback" in source
    assert said and "falling back to the built-in synthetic data set" in said[0]
