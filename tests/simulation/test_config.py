"""Configuration is parsed once, at the edge, with errors that name the setting."""

from __future__ import annotations

import pytest
from helpers.paths import ROOT

from stamen.models import ConfigError
from stamen.server.analytics import EVALUATION_METRICS, evaluation_metrics
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
    example = ROOT / "examples" / "ml-100k.toml"
    assert load_config(example) == load_config()


def test_flwr_run_config_maps_onto_settings_and_names_its_source() -> None:
    from stamen.simulation.engines.flwr_app import config_from_run_config

    config = config_from_run_config(
        {"num-server-rounds": 7, "clients-per-round": 9, "secure-aggregation": False, "seed": ""}
    )
    assert (config.rounds, config.clients_per_round, config.secagg.enabled) == (7, 9, False)
    assert config.seed == load_config(None, {}).seed  # empty values keep the defaults
    assert config_from_run_config({}).secagg.enabled
    with pytest.raises(ConfigError, match="flwr run config: synthetic-items: Input should be"):
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
    with pytest.raises(
        ConfigError, match="num-rounds: unknown key \\(did you mean 'num-server-rounds'\\?\\)"
    ):
        config_from_run_config({"num-rounds": 3})
    with pytest.raises(ConfigError, match="flwr run config: dp: Input should be"):
        config_from_run_config({"dp": "local", "dp-epsilon": 1.0})


def test_the_flower_app_config_in_pyproject_maps_onto_the_defaults() -> None:
    import tomllib

    from stamen.simulation.engines.flwr_app import config_from_run_config

    pyproject = ROOT / "pyproject.toml"
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


def test_run_config_keys_derive_from_the_field_paths() -> None:
    from stamen.server.run_config import ALIASES, run_config_key

    assert run_config_key("clients_per_round") == "clients-per-round"
    assert run_config_key("secagg.num_shares") == "secagg-num-shares"
    assert run_config_key("two_tower.max_history") == "two-tower-max-history"
    assert run_config_key("analytics.trending.every") == "trending-every"
    assert run_config_key("analytics.trending.dp.noise_multiplier") == "trending-noise-multiplier"
    historical = {
        "rounds": "num-server-rounds",
        "secagg.enabled": "secure-aggregation",
        "dp.mode": "dp",
        "dp.target_epsilon": "dp-epsilon",
        "analytics.trending.dp.mode": "trending-dp",
        "analytics.trending.dp.target_epsilon": "trending-epsilon",
    }
    assert all(run_config_key(path) == key == ALIASES[path] for path, key in historical.items())


def test_a_run_config_names_every_problem_as_written_at_once() -> None:
    from stamen.server.deployment import Deployment
    from stamen.simulation.engines.flwr_app import config_from_run_config

    with pytest.raises(ConfigError) as err:
        config_from_run_config(
            {"num-rounds": 3, "secagg-num-sharez": 5, "clients-per-round": 1, "seed": 2}
        )
    message = str(err.value)
    assert message.startswith("3 problems:"), message
    assert "flwr run config: num-rounds: unknown key (did you mean 'num-server-rounds'?)" in message
    assert "flwr run config: secagg-num-sharez: unknown key" in message
    assert "flwr run config: clients-per-round: Input should be greater than or equal to 2" in (
        message
    )
    # the deployment's run config too, with its required keys
    with pytest.raises(ConfigError) as err:
        Deployment({"releases": "r", "checkpoints": "c", "dataset": "x", "trending-every": -1})
    message = str(err.value)
    assert message.startswith("3 problems:"), message
    for problem in (
        "run config: dataset: unknown key",
        "run config: trending-every: Input should be greater than or equal to 0",
        "run config: signing-key: Field required",
    ):
        assert problem in message


def test_a_toml_file_names_every_problem_as_written_at_once(tmp_path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("roundz = 3\nclients-per-round = 1\n[secagg]\nnum-sharez = 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, {"seed": 1})
    message = str(err.value)
    assert message.startswith("3 problems:"), message
    for problem in (
        f"{path}: roundz: unknown key (did you mean 'rounds'?)",
        f"{path}: secagg.num-sharez: unknown key (did you mean 'num-shares'?)",
        f"{path}: clients-per-round: Input should be greater than or equal to 2",
    ):
        assert problem in message


def test_every_key_in_both_pyproject_files_is_a_derived_key() -> None:
    import tomllib

    from stamen.server.deployment import RUN_CONFIG_KEYS as DEPLOYMENT_KEYS
    from stamen.server.deployment import Deployment
    from stamen.simulation.engines.flwr_app import RUN_CONFIG_KEYS as APP_KEYS

    root = ROOT
    for pyproject, known in ((root, APP_KEYS), (root / "deploy", DEPLOYMENT_KEYS)):
        text = (pyproject / "pyproject.toml").read_text()
        keys = set(tomllib.loads(text)["tool"]["flwr"]["app"]["config"]) - {"runtime"}
        assert keys and keys <= set(known), keys - set(known)
        if pyproject.name == "deploy":  # every key a deployment reads can be set per run
            assert keys == set(known), set(known) - keys
    deploy = tomllib.loads((root / "deploy" / "pyproject.toml").read_text())
    assert Deployment(deploy["tool"]["flwr"]["app"]["config"]).train == "model"


def test_every_command_line_flag_is_a_field_of_its_type() -> None:
    import typing
    from pathlib import Path

    from pydantic import BaseModel

    from stamen.simulation.cli.options import FLAGS
    from stamen.simulation.config import SimulationConfig

    def annotation(path: str) -> object:
        model: type[BaseModel] = SimulationConfig
        *sections, name = path.split(".")
        for section in sections:
            model = model.model_fields[section].annotation  # type: ignore[assignment]
        return model.model_fields[name].annotation

    def plain(kind: object) -> object:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if typing.get_origin(kind) is typing.Literal:
            return type(args[0])
        return plain(args[0]) if args else kind

    for path, flag in FLAGS.items():
        assert plain(annotation(path)) is flag.type, path
        for also, value in flag.sets:
            assert isinstance(value, plain(annotation(also))), also  # type: ignore[arg-type]
    assert plain(annotation("data_dir")) is Path


def test_the_cut_offs_set_what_the_federated_evaluation_reports(tmp_path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("[protocol]\ncutoffs = [5, 10, 50]\n")
    evaluation = load_config(path).server_settings(100).analytics.evaluation
    assert evaluation.metrics == evaluation_metrics((5, 10, 50))
    assert "ndcg@50" in evaluation.metrics and "ndcg@20" not in evaluation.metrics
    assert load_config(None).server_settings(100).analytics.evaluation.metrics == (
        EVALUATION_METRICS
    )
    # metrics a config names are kept, if the devices compute them at its cut-offs
    named = {"protocol": {"cutoffs": [5, 10]}, "analytics": {"evaluation": {"metrics": ["hr@5"]}}}
    assert load_config(None, named).server_settings(10).analytics.evaluation.metrics == ("hr@5",)


@pytest.mark.parametrize(
    ("cutoffs", "message"),
    [
        ([5, 20], r"cut-offs \[5, 20\] lack 10: validation NDCG@10 selects"),
        ([20, 10], r"cut-offs must be increasing positive integers, not \[20, 10\]"),
        ([0, 10], r"cut-offs must be increasing positive integers, not \[0, 10\]"),
        ([10, 10], r"cut-offs must be increasing positive integers, not \[10, 10\]"),
    ],
)
def test_bad_cut_offs_are_named(tmp_path, cutoffs, message) -> None:
    path = tmp_path / "run.toml"
    path.write_text(f"[protocol]\ncutoffs = {cutoffs}\n")
    with pytest.raises(ConfigError, match=f"{path}: protocol.cutoffs: {message}"):
        load_config(path)


def test_a_named_metric_the_cut_offs_do_not_compute_is_an_error() -> None:
    named = {
        "protocol": {"cutoffs": [5, 10]},
        "analytics": {"evaluation": {"metrics": ["ndcg@20"]}},
    }
    with pytest.raises(ConfigError, match=r"names \['ndcg@20'\], which a device does not"):
        load_config(None, named)
