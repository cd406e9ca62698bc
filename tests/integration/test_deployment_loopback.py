"""Stamen on Flower's deployment runtime over 127.0.0.1: a SuperLink with TLS and
SuperNode authentication, three SuperNodes each holding its own encrypted device, the
deployment Flower App (``deploy/``) run with ``flwr run``: two rounds of federated MF with
SecAgg+ and user-level DP, then a round of the ranker; a killed run resumed; an
unregistered node refused."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import pytest
from helpers.deployment_runs import release_init, seed_devices
from helpers.loopback import (
    enrol_supernodes,
    flower_home,
    free_port,
    poll,
    register_supernode,
    running,
    start_flwr_run,
    start_superlink,
    stop,
    superlink_command,
    supernode_command,
    text,
    wait_activated,
    wait_logged,
)
from helpers.loopback_runs import (
    APP,
    RUN_S,
    FlwrRun,
    finish_run,
    round_records,
    serverapps,
)
from typer.testing import CliRunner

from stamen.client.device.device import Device
from stamen.client.device.experiments import Experiment
from stamen.models.bundle import ReleaseBundle
from stamen.models.ranker.model import RANKER_METRICS
from stamen.models.ranker.settings import RankerSettings
from stamen.models.ranker.weights import init_ranker
from stamen.privacy import open_signed
from stamen.server.certs import make_certificates
from stamen.simulation.cli.commands import app

pytestmark = pytest.mark.slow

NODES = 3


EXPERIMENT = {
    "id": "explore-loopback",
    "salt": "s1",
    "arms": [{"name": "control"}, {"name": "explore", "overrides": {"explore": 0.5}}],
}


def _deployment(tmp_path: Path, *, experiment: bool = False):
    """Certificates, release 0 and one device per SuperNode, as the README's commands
    make them; with ``experiment``, release 1 carries an A/B experiment (``stamen
    experiment publish``) and each device shows its arm's list and logs it."""
    certs = make_certificates(tmp_path / "certs", supernodes=NODES + 1)
    _, key = release_init(tmp_path, dim=8)
    if experiment:
        definition = tmp_path / "experiment.json"
        definition.write_text(json.dumps(EXPERIMENT))
        result = CliRunner().invoke(
            app,
            ["experiment", "publish", str(definition), "--releases", str(tmp_path / "releases")]
            + ["--signing-key", str(key)],
        )
        assert result.exit_code == 0, (result.output, result.exception)

    def serve_the_experiment(d: int, dev: Device) -> None:
        shown = dev.recommend(5)  # what the app showed, and what the person did with it
        dev.log_shown(shown)
        dev.record(shown[0].item, "view" if d % 2 == 0 else "not_interested")

    seed_devices(tmp_path, key, NODES, then=serve_the_experiment if experiment else None)
    return certs, key


def _run_config(tmp_path: Path, key: Path, **extra: object) -> str:
    values = {
        "releases": f"'{tmp_path / 'releases'}'",
        "checkpoints": f"'{tmp_path / 'checkpoints'}'",
        "signing-key": f"'{key}'",
        "population": NODES,
        "num-server-rounds": 2,
        "dp": "'central'",
        "dp-epsilon": 8.0,
        "dp-clip-norm": 0.5,
        **extra,
    }
    return " ".join(f"{k}={v}" for k, v in values.items())


@contextmanager
def _federation(
    tmp_path: Path, *, forking: bool = False, in_memory: bool = False, experiment: bool = False
) -> Iterator[dict]:
    """A TLS SuperLink with node authentication, ``NODES`` registered SuperNodes with
    their devices and one unregistered SuperNode; every process stopped on exit.
    ``forking``: the SuperNodes are ``stamen-supernode`` and run their ClientApps through
    ``stamen-superexec``; ``in_memory``: the SuperLink keeps Flower's in-memory state;
    ``experiment``: the devices serve an A/B experiment (:func:`_deployment`)."""
    certs, key = _deployment(tmp_path, experiment=experiment)
    port = free_port()
    env = flower_home(tmp_path / "home", "test", port, certs.ca_certificate)
    log = tmp_path / "superlink.log"
    link_cmd = superlink_command(
        certs, port, tmp_path, "--enable-supernode-auth", in_memory=in_memory
    )
    with ExitStack() as stack:
        link = start_superlink(stack, link_cmd, env=env, log=log, what="start")
        ids, started = enrol_supernodes(
            stack, certs, NODES, port, tmp_path, federation="test", env=env, forking=forking
        )
        nodes = [procs[0][1] for procs in started]
        execs = [proc for procs in started for _, proc in procs[1:]]
        commands = [[command for command, _ in procs] for procs in started]  # with SuperExec's
        stranger = supernode_command(certs.supernodes[NODES].private_key, certs, port)
        stack.enter_context(running(stranger, env=env, log=tmp_path / "stranger.log"))
        wait_activated(ids, link=link, log=log, how="connecting over TLS")
        yield {
            "env": env,
            "key": key,
            "log": log,
            "link": link,
            "nodes": nodes,
            "execs": execs,
            "commands": commands,
            "certs": certs,
            "link_cmd": link_cmd,
            "stack": stack,
        }


def _run(tmp_path: Path, fed: dict, **extra: object) -> FlwrRun:
    config = _run_config(tmp_path, fed["key"], **extra)
    log = tmp_path / f"flwr-run-{len(list(tmp_path.glob('flwr-run-*.log')))}.log"
    return FlwrRun(start_flwr_run(APP, "test", config, env=fed["env"], log=log), log)


def _releases(tmp_path: Path, key: Path) -> list[ReleaseBundle]:
    public = key.with_suffix(".pub").read_bytes()
    return [
        ReleaseBundle.decode(open_signed(p.read_bytes(), public_key=public))
        for p in sorted((tmp_path / "releases").glob("release-*.stamen"))
    ]


TRENDING = {
    "trending-every": 1,
    "trending-window-days": 1.0,
    "trending-dp": "'central'",
    "trending-epsilon": 8.0,
}


RANKER = {"train": "'ranker'", "ranker-hidden": 0, "num-server-rounds": 1}

MEASURE = {
    "experiment-every": 1,
    "experiment-dp": "'central'",
    "experiment-epsilon": 8.0,
    "experiment-monitor": "true",
}


def test_two_secure_private_rounds_over_tls_with_node_authentication(tmp_path) -> None:
    """Also: the SuperNodes are Stamen's (shorter waits) and run their ClientApps through
    Stamen's forking SuperExec, each round asks the devices for private trending counts
    and measures the A/B experiment their release carries (its own ε, its report read
    back by ``stamen experiment report``), and a second run on the same federation trains
    the ranker for a round."""
    with _federation(tmp_path, forking=True, experiment=True) as fed:
        log = fed["log"]
        wait_logged(
            log,
            "No SuperNode found with the given public key",
            proc=fed["link"],
            what="the unregistered SuperNode refused",
        )
        retrieval = _run(tmp_path, fed, **TRENDING, **MEASURE)
        finish_run(retrieval, tmp_path / "checkpoints", 2)
        ranker_run = {**RANKER, "checkpoints": f"'{tmp_path / 'ranker-checkpoints'}'"}
        finish_run(_run(tmp_path, fed, **ranker_run), tmp_path / "ranker-checkpoints", 1)
    rounds = round_records(tmp_path / "checkpoints")
    assert [r["round"] for r in rounds] == [1, 2], retrieval.failure()
    assert text(log).count("Activated node_id=") == NODES
    assert all(r["devices"] == NODES and r["failures"] == 0 for r in rounds)
    epsilons = [r["privacy"]["epsilon"] for r in rounds]
    assert 0 < epsilons[0] < epsilons[1] <= 8.0 + 1e-6
    bundles = _releases(tmp_path, fed["key"])
    assert [b.release for b in bundles] == [0, 1, 2, 3, 4]
    # release 1 is release 0 with the experiment; every later release carries it on
    assert "experiments" not in bundles[0].extras
    published = Experiment.from_json(EXPERIMENT).to_json()  # with the defaults filled in
    assert all(b.extras["experiments"] == [published] for b in bundles[1:])
    _check_measurements(rounds, tmp_path)
    bundles.pop(1)  # the experiment's release: release 0's model, as trained from
    # the ranker's run: every device answered from its own replayed list under SecAgg+
    # and DP, its release 3 holds the retrieval model of release 2 and the new ranker,
    # and its last round's evaluation is the secure sum of the devices' list metrics
    (ranked,) = round_records(tmp_path / "ranker-checkpoints")
    assert ranked["devices"] == NODES and ranked["failures"] == 0, ranked
    assert 0 < ranked["privacy"]["epsilon"] <= 8.0 + 1e-6
    evaluation = ranked["evaluate"]
    assert evaluation["secure"] and evaluation["answered"] == NODES, evaluation
    assert 0 < evaluation["devices"] <= NODES
    assert all(0 <= evaluation[name] <= 1 for name in RANKER_METRICS), evaluation
    ranker_release = bundles.pop()
    assert ranker_release.ranker is not None and bundles[-1].ranker is None
    for a, b in zip(ranker_release.shared_arrays(), bundles[-1].shared_arrays(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ranker_release.trending, bundles[-1].trending)
    assert not np.array_equal(ranker_release.ranker[0], init_ranker(RankerSettings(hidden=0), 0)[0])
    first, last = bundles[0].shared_arrays(), bundles[-1].shared_arrays()
    assert not all(np.allclose(a, b) for a, b in zip(first, last, strict=True))
    # trending: every device asked each round, its own ε, the noisy counts in the release
    trending = [r["analytics"]["trending"] for r in rounds]
    assert all(t["devices"] == NODES and "failed" not in t for t in trending), trending
    spent = [t["privacy"]["epsilon"] for t in trending]
    assert 0 < spent[0] < spent[1] <= 8.0 + 1e-6
    assert bundles[0].trending is None
    assert all(b.trending is not None and b.trending.shape == (100,) for b in bundles[1:])
    print({"round_seconds": [round(r["seconds"], 1) for r in rounds], "epsilon": epsilons})


def _check_measurements(rounds: list[dict], tmp_path: Path) -> None:
    """Each round measured the experiment: every device answered under SecAgg+, the
    report has both arms and every effect, ε grows within its budget, and ``stamen
    experiment report`` prints it."""
    name = f"experiment:{EXPERIMENT['id']}"
    measured = [r["analytics"][name] for r in rounds]
    assert all(m["devices"] == NODES and "failed" not in m for m in measured), measured
    spent = [m["report"]["privacy"]["epsilon"] for m in measured]
    assert 0 < spent[0] < spent[1] <= 8.0 + 1e-6
    report = measured[-1]["report"]
    assert [a["name"] for a in report["arms"]] == ["control", "explore"]
    # monitored: the second of two planned looks, a boundary wherever a variance was found
    assert (report["monitoring"]["look"], report["monitoring"]["looks"]) == (2, 2)
    assert len(report["monitoring"]["effects"]) == 4
    assert {e["metric"] for e in report["effects"]} == {
        "exposures",
        "engagement",
        "positive_rate",
        "not_interested",
    }
    result = CliRunner().invoke(app, ["experiment", "report", str(tmp_path / "checkpoints")])
    assert result.exit_code == 0, (result.output, result.exception)
    assert EXPERIMENT["id"] in result.output and "explore" in result.output


def _run_to_round_1(tmp_path: Path, fed: dict) -> FlwrRun:
    """A two-round ``flwr run``, once its round 1 is in the log."""
    first = _run(tmp_path, fed)
    poll(
        lambda: len(round_records(tmp_path / "checkpoints")) >= 1,
        proc=first.proc,
        log=first.log,
        what="round 1",
        wait_s=RUN_S,
    )
    return first


def _check_resumed(tmp_path: Path, fed: dict, resumed: FlwrRun) -> list[dict]:
    """Rounds 1 and 2 in the log, ε continuing from round 1, releases 0 to 2; the rounds."""
    rounds = round_records(tmp_path / "checkpoints")
    assert [r["round"] for r in rounds] == [1, 2], resumed.failure()
    epsilons = [r["privacy"]["epsilon"] for r in rounds]
    assert 0 < epsilons[0] < epsilons[1] <= 8.0 + 1e-6  # continued, not restarted at round 1
    assert [b.release for b in _releases(tmp_path, fed["key"])] == [0, 1, 2]
    return rounds


def test_a_killed_server_app_resumes_at_the_next_round_with_epsilon_continuing(tmp_path):
    with _federation(tmp_path) as fed:
        first = _run_to_round_1(tmp_path, fed)
        killed = serverapps(fed["env"]["FLWR_HOME"])
        assert killed, "no ServerApp process found"
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        first.proc.kill()
        first.proc.wait(timeout=30)
        assert [r["round"] for r in round_records(tmp_path / "checkpoints")] == [1]
        resumed = _run(tmp_path, fed, resume="true")
        finish_run(resumed, tmp_path / "checkpoints", 2)
    _check_resumed(tmp_path, fed, resumed)


def test_an_in_memory_superlink_restarted_resumes_once_the_nodes_register_again(tmp_path):
    """The README's fast SuperLink (Flower's in-memory state) killed after round 1: the
    restarted one has forgotten the SuperNodes, which exit when it refuses them; their
    keys registered again and the SuperNodes restarted, the run submitted again with
    ``resume=true`` continues at round 2 with ε continuing."""
    with _federation(tmp_path, forking=True, in_memory=True) as fed:
        first = _run_to_round_1(tmp_path, fed)
        home = fed["env"]["FLWR_HOME"]
        os.killpg(fed["link"].pid, signal.SIGKILL)  # the SuperLink and what it started
        fed["link"].wait(timeout=30)
        for pid in serverapps(home):  # a ServerApp left without its SuperLink
            os.kill(pid, signal.SIGKILL)
        first.proc.kill()
        first.proc.wait(timeout=30)
        assert [r["round"] for r in round_records(tmp_path / "checkpoints")] == [1]
        log = tmp_path / "superlink-restarted.log"
        link = start_superlink(
            fed["stack"], fed["link_cmd"], env=fed["env"], log=log, what="restart"
        )
        for proc in fed["nodes"] + fed["execs"]:
            stop(proc)
        for d in range(NODES):
            node_id = register_supernode(fed["certs"].supernodes[d].public_key, "test", fed["env"])
            for i, command in enumerate(fed["commands"][d]):
                again = tmp_path / f"restarted-{d}-{i}.log"
                fed["stack"].enter_context(running(command, env=fed["env"], log=again))
            wait_activated([node_id], link=link, log=log, how=f"(device {d}) reconnecting")
        resumed = _run(tmp_path, fed, resume="true")
        finish_run(resumed, tmp_path / "checkpoints", 2)
    assert _check_resumed(tmp_path, fed, resumed)[1]["devices"] == NODES


@pytest.mark.parametrize("killed", [1, 2], ids=["threshold-holds", "below-threshold"])
@pytest.mark.usefixtures("cpu_hog")
def test_supernodes_killed_mid_round(tmp_path, killed: int) -> None:
    """SuperNodes are killed as they receive the round's training message (SecAgg+'s
    collect-masked-vectors stage, after the key shares went out), on a machine whose cores
    are all busy (``cpu_hog``). The stage ends on them when the SuperLink reports them
    unavailable (their heartbeats stopped) or its timeout passes, the deployment's own
    (``SECAGG_TIMEOUT_S``): a living device, however slow the loaded machine makes it,
    answers within it, which a shorter test-only timeout did not hold (the survivors were
    counted out with the killed). One killed: the two others' shares of its secret remove
    its masks and the round aggregates two. Two killed: one device is below the
    reconstruction threshold (2), the round fails with a message saying so and the model
    stays as it was."""
    with _federation(tmp_path) as fed:
        victims = range(NODES - killed, NODES)
        run = _run(tmp_path, fed, **{"num-server-rounds": 1})
        poll(
            lambda: all(
                text(tmp_path / f"node-{v}.log").count("Receiving: train message") >= 3
                for v in victims
            ),
            proc=run.proc,
            log=run.log,
            what="the training stage reaching the SuperNodes to kill",
            wait_s=RUN_S,
        )
        for v in victims:
            os.killpg(fed["nodes"][v].pid, signal.SIGKILL)
        finish_run(run, tmp_path / "checkpoints", 1)
        status_file = tmp_path / "checkpoints" / "status.json"
        deadline = time.monotonic() + RUN_S  # the ServerApp records how the run ended
        while '"running"' in text(status_file) and time.monotonic() < deadline:
            time.sleep(0.5)
        status = json.loads(text(status_file))
    rounds = round_records(tmp_path / "checkpoints")
    assert [r["round"] for r in rounds] == [1], run.failure()
    (record,) = rounds
    releases = [b.shared_arrays() for b in _releases(tmp_path, fed["key"])]
    if killed == 1:
        assert record["cohort"] == NODES and record["devices"] == NODES - 1, record
        # counted out by the stage's timeout, or reported unavailable by the SuperLink (a
        # reply Flower 1.42's collect stage lists among the failures twice, counted once)
        reasons = record.get("failure_reasons", [])
        timed_out = record.get("dropouts") == 1 and "timeout" in record["dropout_reason"]
        unavailable = record.get("failures") == 1 and len(reasons) == 1
        unavailable = unavailable and "Node Unavailable" in reasons[0]
        assert timed_out != unavailable, record
        assert 0 < record["privacy"]["epsilon"] <= 8.0 + 1e-6
        first, last = releases
        assert not all(np.array_equal(a, b) for a, b in zip(first, last, strict=True))
        assert status["status"] == "completed"
    else:
        assert record["devices"] == 0 and "reconstruction threshold" in record["failed"]
        assert len(releases) == 1 and "release" not in record  # the failed round published nothing
        assert status["status"] == "failed" and "reconstruction threshold" in status["reason"]
