"""The deployment apps on their layers: the ServerApp reads server settings and the
releases folder only, the ClientApp opens the device its node config names and decides
its own policy (fail closed)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Context, MessageType, RecordDict
from helpers.deployment_runs import release_init, run_config
from helpers.paths import ROOT
from typer.testing import CliRunner

from stamen.client.device.device import Device
from stamen.client.flower.clientapp import ClientRuntime
from stamen.client.flower.deployment import DevicePolicy, device_policy
from stamen.errors import (
    ConfigError,
    DataError,
    PublishError,
    RoundFailedError,
    SecureAggregationRequired,
)
from stamen.models.bundle import ReleaseBundle, latest_release
from stamen.models.mf.settings import DEVICE_ID_KEY
from stamen.models.ranker.model import RANKER_METRICS
from stamen.models.ranker.settings import RankerSettings
from stamen.models.ranker.weights import init_ranker
from stamen.models.registry import build_model
from stamen.privacy import open_signed
from stamen.server.deployment import Deployment, RunStatus, deployment_strategy, serve
from stamen.server.ranker_strategy import RankerAveraging
from stamen.server.releases import ReleaseWriter, load_or_create_signing_key
from stamen.simulation.cli.commands import app

runner = CliRunner()


def test_one_flower_app_serves_both_runtimes() -> None:
    import tomllib

    from stamen.runtimes import CLIENT_RUNTIMES, SERVER_RUNTIMES, load_runtime
    from stamen.server.deployment import serve

    apps = [
        tomllib.loads((ROOT / folder / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
        for folder in (".", "deploy")
    ]
    assert (
        apps[0]["components"]
        == apps[1]["components"]
        == {
            "serverapp": "stamen.server.app:server_app",
            "clientapp": "stamen.client.flower.clientapp:client_app",
        }
    )
    assert [app["config"]["runtime"] for app in apps] == ["simulation", "deployment"]
    assert load_runtime(SERVER_RUNTIMES, {"runtime": "deployment"}) is serve
    for name in ("simulation", "deployment"):
        assert isinstance(load_runtime(CLIENT_RUNTIMES, {"runtime": name}), ClientRuntime)
    with pytest.raises(ConfigError, match="runtime 'cloud' is unknown; registered runtimes: "):
        load_runtime(SERVER_RUNTIMES, {"runtime": "cloud"})
    with pytest.raises(ConfigError, match="no 'runtime' key"):
        load_runtime(CLIENT_RUNTIMES, {})


def test_the_server_starts_from_the_signed_release_zero(tmp_path) -> None:
    releases, key = release_init(tmp_path)
    assert latest_release(releases).name.startswith("release-")
    again = runner.invoke(
        app, ["release", "init", str(releases), "--signing-key", str(key), "--dataset", "x"]
    )
    assert again.exit_code != 0 and isinstance(again.exception, DataError | SystemExit)
    strategy = deployment_strategy(
        Deployment(run_config(tmp_path, releases, key, **{"secure-aggregation": False}))
    )
    assert strategy.settings.rounds == 2 and strategy.settings.clients_per_round == 3
    assert strategy.settings.model == "mf" and not strategy.settings.secagg.enabled
    assert strategy.releases is not None and strategy.start_round == 0
    # deployed devices keep no held-out items: not even the last round asks them to evaluate
    assert not strategy.settings.evaluate
    assert strategy.configure_evaluate(2, None, client_manager=None) == []  # type: ignore[arg-type]


def test_the_server_reads_only_known_settings_and_needs_its_folders(tmp_path) -> None:
    releases, key = release_init(tmp_path)
    with pytest.raises(ConfigError, match="run config: dataset: unknown key"):
        Deployment(run_config(tmp_path, releases, key, dataset="ml-100k"))
    config = run_config(tmp_path, releases, key)
    del config["signing-key"]
    with pytest.raises(ConfigError, match="signing-key"):
        Deployment(config)
    with pytest.raises(ConfigError, match="no release"):
        deployment_strategy(Deployment(run_config(tmp_path, tmp_path / "empty", key)))
    with pytest.raises(ConfigError, match="noise_multiplier or target_epsilon"):
        deployment_strategy(Deployment(run_config(tmp_path, releases, key, dp="central")))
    with pytest.raises(ConfigError, match="population"):  # DP needs the population size
        deployment_strategy(
            Deployment(run_config(tmp_path, releases, key, dp="central", **{"dp-epsilon": 4.0}))
        )


def test_a_deployment_trains_the_ranker_against_the_release_it_starts_from(tmp_path) -> None:
    releases, key = release_init(tmp_path)
    start = ReleaseBundle.decode(
        open_signed(latest_release(releases).read_bytes(), public_key=_public(key))
    )
    ranker_run = {"train": "ranker", "ranker-hidden": 4, "population": 3}
    strategy = deployment_strategy(Deployment(run_config(tmp_path, releases, key, **ranker_run)))
    assert isinstance(strategy, RankerAveraging) and strategy.ranker.hidden == 4
    assert strategy.release_offset == start.release
    for got, want in zip(strategy.retrieval, start.shared_arrays(), strict=True):
        np.testing.assert_array_equal(got, want)
    # no ranker in release 0: the run starts from the retrieval order
    for got, want in zip(strategy.server.arrays(), init_ranker(strategy.ranker, 0), strict=True):
        np.testing.assert_array_equal(got, want)
    # its only evaluation is the last round's, over each device's own offered list
    assert strategy.settings.evaluate and strategy.settings.eval_every == 0
    assert strategy.settings.analytics.evaluation.metrics == RANKER_METRICS
    assert strategy.settings.secure_evaluation
    # a release with a ranker: a ranker run of the same shape starts from it, a retrieval
    # run keeps it (and the trending counts) in every release it publishes
    writer = ReleaseWriter(
        releases,
        private_key=load_or_create_signing_key(key)[0],
        public_key=_public(key),
        model=build_model(start.model, dict(start.settings), start.catalog),
    )
    ranker = [w + 0.5 for w in init_ranker(RankerSettings(hidden=4), 1)]
    counts = np.arange(len(start.catalog), dtype=np.float32)
    writer.publish(1, start.shared_arrays(), trending=counts, ranker=ranker)
    again = deployment_strategy(Deployment(run_config(tmp_path, releases, key, **ranker_run)))
    assert again.release_offset == 1
    for got, want in zip(again.server.arrays(), ranker, strict=True):
        np.testing.assert_array_equal(got, want)
    model_run = deployment_strategy(Deployment(run_config(tmp_path, releases, key)))
    assert not isinstance(model_run, RankerAveraging) and not model_run.settings.evaluate
    published = ReleaseBundle.decode(  # its round 1 follows release 1: release 2
        open_signed(model_run._publish(1).read_bytes(), public_key=_public(key))
    )
    assert published.ranker is not None and published.trending is not None
    for got, want in zip(published.ranker, ranker, strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(published.trending, counts)
    # a killed ranker run resumes numbering its releases where it stopped: it started
    # after release 2 (the retrieval run's above), so its round 1 published release 3,
    # and the resumed run's round 2 publishes release 4
    ranker_run = {**ranker_run, "secure-aggregation": False}
    first = deployment_strategy(Deployment(run_config(tmp_path, releases, key, **ranker_run)))
    first.finish_round(1)
    assert first.history[-1].release == "release-000003.stamen"
    resumed = deployment_strategy(
        Deployment(run_config(tmp_path, releases, key, **ranker_run, resume=True))
    )
    assert isinstance(resumed, RankerAveraging) and resumed.start_round == 1
    assert resumed.release_offset == first.release_offset == 2
    assert resumed._publish(2).name == "release-000004.stamen"
    # never in the clear, and only with the population known
    plain = {**ranker_run, "secure-aggregation": False}
    unknown_population = {"train": "ranker", "ranker-hidden": 4}
    built = deployment_strategy(Deployment(run_config(tmp_path, releases, key, **plain)))
    assert not built.settings.evaluate and built.configure_evaluate(2, None, None) == []  # type: ignore[arg-type]
    built = deployment_strategy(
        Deployment(run_config(tmp_path, releases, key, **unknown_population))
    )
    assert not built.settings.evaluate
    with pytest.raises(RoundFailedError):  # ending a SecAgg+ round with no aggregate fails
        built.configure_evaluate(2, None, None)  # type: ignore[arg-type]


def test_a_ranker_run_refuses_bad_ranker_settings(tmp_path) -> None:
    releases, key = release_init(tmp_path)
    with pytest.raises(ConfigError, match="train: Input should be 'model' or 'ranker'"):
        Deployment(run_config(tmp_path, releases, key, train="everything"))
    with pytest.raises(ConfigError, match="ranker-hidden set, but train is 'model'"):
        Deployment(run_config(tmp_path, releases, key, **{"ranker-hidden": 4}))
    with pytest.raises(ConfigError, match="ranker-local-lr: Input should be greater than 0"):
        Deployment(run_config(tmp_path, releases, key, train="ranker", **{"ranker-local-lr": 0}))


def _public(key: Path) -> bytes:
    return load_or_create_signing_key(key)[1]


def _message(kind: str, secagg: bool) -> SimpleNamespace:
    records = {"secaggplus_configs": {}} if secagg else {}
    return SimpleNamespace(
        metadata=SimpleNamespace(message_type=kind),
        content=SimpleNamespace(config_records=records),
    )


def _context(node_config: dict) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


def test_a_device_that_requires_secagg_refuses_a_plain_training_request(tmp_path) -> None:
    passed = []

    def call_next(msg, context):
        passed.append(msg.metadata.message_type)
        return msg

    required = _context({"device": str(tmp_path / "d"), "device-id": 3})
    with pytest.raises(SecureAggregationRequired):
        device_policy(_message(MessageType.TRAIN, secagg=False), required, call_next)
    device_policy(_message(MessageType.QUERY, secagg=False), required, call_next)
    optional = _context(
        {"device": str(tmp_path / "d"), "device-id": 3, "secure-aggregation": "optional"}
    )
    device_policy(_message(MessageType.TRAIN, secagg=False), optional, call_next)
    assert passed == [MessageType.QUERY, MessageType.TRAIN]


@pytest.mark.parametrize(
    ("node_config", "problem"),
    [
        ({"device-id": 1}, "missing \\['device'\\]"),
        ({"device": "d"}, "missing \\['device-id'\\]"),
        ({"device": "d", "device-id": "x"}, "integer"),
        ({"device": "d", "device-id": 1, "secure-aggregation": "off"}, "required"),
    ],
)
def test_missing_or_bad_node_settings_fail_closed(node_config, problem) -> None:
    with pytest.raises(ConfigError, match=problem):
        DevicePolicy(node_config)


def test_the_client_opens_its_own_device_and_reports_its_stable_id(tmp_path) -> None:
    releases, key = release_init(tmp_path)
    public = key.with_suffix(".pub").read_bytes()
    store_key = bytes(range(32))
    (tmp_path / "phone.key").write_bytes(store_key)
    with Device.open(tmp_path / "phone", key=store_key, release_key=public) as device:
        device.apply_release(latest_release(releases))
        device.record_many({"item": str(i), "kind": "view", "at": float(i)} for i in (1, 2, 5))
    from stamen.client.flower.deployment import deployment_client_fn

    context = _context({"device": str(tmp_path / "phone"), "device-id": 12})
    deployed = deployment_client_fn(context).numpy_client  # type: ignore[attr-defined]
    assert deployed.get_properties({}) == {DEVICE_ID_KEY: 12}
    numpy_client = deployed._client()
    assert numpy_client.row == 12
    catalog = numpy_client.data.catalog
    assert [catalog.item_id(int(i)) for i in numpy_client.data.train_items] == ["1", "2", "5"]
    wrong = _context({"device": str(tmp_path / "phone"), "device-id": 12, "key-file": "nope"})
    with pytest.raises(ConfigError, match="no store key"):
        deployment_client_fn(wrong).numpy_client._client()  # type: ignore[attr-defined]


def test_releases_only_move_forward(tmp_path) -> None:
    releases, key = release_init(tmp_path)
    start = ReleaseBundle.decode(
        open_signed(latest_release(releases).read_bytes(), public_key=_public(key))
    )
    writer = ReleaseWriter(
        releases,
        private_key=load_or_create_signing_key(key)[0],
        public_key=_public(key),
        model=build_model(start.model, dict(start.settings), start.catalog),
    )
    writer.publish(3, start.shared_arrays())
    before = {p.name: p.read_bytes() for p in releases.iterdir()}
    with pytest.raises(PublishError, match="overwrite a published release"):
        writer.publish(3, start.shared_arrays())
    with pytest.raises(PublishError, match="go back from release 3"):
        writer.publish(2, start.shared_arrays())
    assert {p.name: p.read_bytes() for p in releases.iterdir()} == before  # nothing touched
    assert writer.newest() == 3


def test_consecutive_runs_continue_the_numbering_and_a_failed_round_publishes_nothing(
    tmp_path,
) -> None:
    releases, key = release_init(tmp_path)
    plain = {"secure-aggregation": False}
    first = deployment_strategy(Deployment(run_config(tmp_path, releases, key, **plain)))
    first.finish_round(1)
    assert first.history[-1].release == "release-000001.stamen"
    second = deployment_strategy(Deployment(run_config(tmp_path, releases, key, **plain)))
    second.finish_round(1)  # a new run starts after the newest release: nothing rewritten
    assert second.history[-1].release == "release-000002.stamen"
    assert latest_release(releases).name == "release-000002.stamen"
    # under SecAgg+ a round that ends without an aggregate failed: no release, and the
    # deployment's round callback stops the run
    secure = deployment_strategy(Deployment(run_config(tmp_path, releases, key)))
    with pytest.raises(RoundFailedError, match="SecAgg\\+ halted without an aggregate"):
        secure.finish_round(1)
    assert secure.history[-1].failed and secure.history[-1].release is None
    assert latest_release(releases).name == "release-000002.stamen"
    # rounds.jsonl is the current run's: each new run moved the previous run's lines aside
    checkpoints = tmp_path / "checkpoints"
    lines = (checkpoints / "rounds.jsonl").read_text().splitlines()
    assert len(lines) == 1 and "failed" in json.loads(lines[0])
    earlier = sorted(checkpoints.glob("rounds-*.jsonl"))
    assert [len(p.read_text().splitlines()) for p in earlier] == [1, 1]
    assert {json.loads(p.read_text())["release"] for p in earlier} == {
        "release-000001.stamen",
        "release-000002.stamen",
    }
    # what the server keeps is the owner's alone: the log and the checkpoints
    kept = [checkpoints / "rounds.jsonl", checkpoints / "latest.json", *earlier]
    kept += list(checkpoints.glob("round-*.pt"))
    assert len(kept) > 4 and {p.stat().st_mode & 0o777 for p in kept} == {0o600}


def test_a_runs_outcome_is_recorded_and_stamen_deploy_status_exits_with_it(tmp_path) -> None:
    releases, key = release_init(tmp_path)
    checkpoints = tmp_path / "checkpoints"
    context = SimpleNamespace(
        run_id=7, run_config=run_config(tmp_path, tmp_path / "no-releases", key)
    )
    with pytest.raises(ConfigError, match="no release to start from"):
        serve(None, context)  # type: ignore[arg-type]
    status = json.loads((checkpoints / "status.json").read_text())
    assert status["run_id"] == 7 and status["status"] == "failed"
    assert "ConfigError" in status["reason"] and "no release" in status["reason"]
    failed = runner.invoke(app, ["deploy", "status", str(checkpoints)])
    assert failed.exit_code == 1 and "run 7 failed: ConfigError" in failed.output
    other = runner.invoke(app, ["deploy", "status", str(checkpoints), "--run-id", "8"])
    assert isinstance(other.exception, DataError) and "not run 8's" in str(other.exception)
    RunStatus(checkpoints, run_id=8).write("running")
    running = runner.invoke(
        app, ["deploy", "status", str(checkpoints), "--wait", "--timeout", "0.1"]
    )
    assert running.exit_code == 3
    RunStatus(checkpoints, run_id=8).write("completed")
    done = runner.invoke(app, ["deploy", "status", str(checkpoints), "--run-id", "8", "--json"])
    assert done.exit_code == 0 and json.loads(done.output)["status"] == "completed"


@pytest.mark.parametrize(
    ("run_config", "error", "said"),
    [
        ("population=3 dp='central' dp-epsilon=8.0 dp-clip-norm=0.5", None, "4 keys set"),
        ("population=3 dp-epsilom=8.0", ConfigError, "'dp-epsilom' (did you mean 'dp-epsilon'?)"),
        ("dp='central' dp-epsilon=-1.0 population=3", ConfigError, "dp-epsilon: Input should be"),
        ("metrics-address='nowhere'", ConfigError, "metrics-address 'nowhere'"),
    ],
)
def test_deploy_check_names_a_misspelt_key_and_a_bad_value(
    run_config: str, error: type[Exception] | None, said: str
) -> None:
    """What Flower would refuse without a name, or the ServerApp only once the run has
    started, `stamen deploy check` names before `flwr run` (a ConfigError: `stamen` prints
    it on one line and exits 2)."""
    from stamen.simulation.cli.commands import app

    result = CliRunner().invoke(
        app, ["deploy", "check", str(ROOT / "deploy"), "--run-config", run_config]
    )
    if error is None:
        assert result.exit_code == 0 and said in result.output, result.output
    else:
        assert isinstance(result.exception, error) and said in str(result.exception)
