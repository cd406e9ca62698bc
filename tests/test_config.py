"""Configuration is parsed once, at the edge, with errors that name the setting."""

from __future__ import annotations

import pytest

from stamen.models import ConfigError
from stamen.server.settings import ServerSettings
from stamen.simulation.config import load_config


def test_toml_with_kebab_keys_and_flag_overrides(tmp_path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        "rounds = 7\nclients-per-round = 9\n[local]\nlocal-epochs = 2\n"
        '[optimizer]\nname = "fedavg"\n'
    )
    config = load_config(path, {"rounds": 11, "seed": None})
    assert config.rounds == 11 and config.clients_per_round == 9 and config.seed == 0
    assert config.local.local_epochs == 2 and config.optimizer.name == "fedavg"


def test_bad_values_name_the_file_and_field(tmp_path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("rounds = 0\n[local]\ndim = -3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert (
        "bad.toml" in str(err.value)
        and "rounds" in str(err.value)
        and "local.dim" in str(err.value)
    )


def test_unknown_keys_and_even_secagg_shares_are_rejected(tmp_path) -> None:
    with pytest.raises(ConfigError, match="roundz"):
        load_config(None, {"roundz": 3})
    with pytest.raises(ConfigError, match="num_shares must be odd"):
        load_config(None, {"secagg": {"enabled": True, "num_shares": 4}})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_the_example_config_spells_out_the_defaults() -> None:
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "ml-100k.toml"
    assert load_config(example) == load_config()


def test_flwr_run_config_maps_onto_settings_and_names_its_source() -> None:
    from stamen.simulation.engines.flwr_app import config_from_run_config

    config = config_from_run_config(
        {"num-server-rounds": 7, "clients-per-round": 9, "secure-aggregation": False, "seed": ""}
    )
    assert (config.rounds, config.clients_per_round, config.secagg.enabled) == (7, 9, False)
    assert config.seed == load_config(None, {}).seed  # empty values keep the defaults
    assert config_from_run_config({}).secagg.enabled
    with pytest.raises(ConfigError, match="flwr run config: synthetic_items"):
        config_from_run_config({"synthetic-items": 5})


def test_flwr_run_config_sets_secagg_and_dp_and_refuses_unknown_keys() -> None:
    from stamen.simulation.engines.flwr_app import config_from_run_config

    config = config_from_run_config(
        {
            "secagg-num-shares": 7,
            "secagg-reconstruction-threshold": 4,
            "secagg-clipping-range": 4.0,
            "dp": "distributed",
            "dp-epsilon": 4.0,
            "dp-clip-norm": 0.5,
            "dp-noise-multiplier": "",
        }
    )
    assert (config.secagg.num_shares, config.secagg.reconstruction_threshold) == (7, 4)
    assert config.secagg.enabled and config.secagg.clipping_range == 4.0
    assert (config.dp.mode, config.dp.target_epsilon, config.dp.clip_norm) == (
        "distributed",
        4.0,
        0.5,
    )
    assert config.dp.noise_multiplier is None
    with pytest.raises(ConfigError, match=r"unknown keys \['num-rounds'\]"):
        config_from_run_config({"num-rounds": 3})
    with pytest.raises(ConfigError, match="flwr run config: dp.mode"):
        config_from_run_config({"dp": "local", "dp-epsilon": 1.0})


def test_the_flower_app_config_in_pyproject_maps_onto_the_defaults() -> None:
    import tomllib
    from pathlib import Path

    from stamen.simulation.engines.flwr_app import config_from_run_config

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    app_config = tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"]
    config = config_from_run_config(app_config)
    assert config.secagg == load_config(None, {}).secagg and not config.dp.enabled

    # one set of defaults: the app's rounds, cohort and evaluation are the server's
    def schedule(c) -> tuple:
        return c.rounds, c.clients_per_round, c.eval_every

    assert schedule(config) == schedule(load_config(None, {})) == schedule(ServerSettings())
    deploy = tomllib.loads((pyproject.parent / "deploy" / "pyproject.toml").read_text())
    deploy_config = deploy["tool"]["flwr"]["app"]["config"]
    assert deploy_config["num-server-rounds"] == deploy_config["clients-per-round"] == ""
