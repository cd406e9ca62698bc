"""A secure loopback federation for a deployment run and the ``flwr run`` on it: a TLS
SuperLink with SuperNode authentication, registered SuperNodes each serving its own
device (``tests/helpers/loopback.py`` starts the processes), the deployment Flower App
(``deploy/``) run with ``flwr run --stream``, waited for until its rounds are logged, and
the rounds read back from the run's ``rounds.jsonl``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.loopback import (
    enrol_supernodes,
    flower_home,
    free_port,
    start_flwr_run,
    start_superlink,
    superlink_command,
    text,
    wait_activated,
)
from helpers.paths import ROOT

#: The deployment Flower App.
APP = ROOT / "deploy"
#: What Flower's ServerApp process logs, with its traceback, when the app raised.
SERVERAPP_RAISED = "ServerApp raised an exception"
#: The whole ``flwr run`` of a test, bounded.
RUN_S = 420


@dataclass(frozen=True)
class Federation:
    """A running secure loopback federation: the environment of its Flower home (the
    connection ``test``), the SuperLink's process and log."""

    env: dict[str, str]
    link: subprocess.Popen
    log: Path


@contextmanager
def secure_federation(
    tmp_path: Path,
    certs,  # noqa: ANN001
    nodes: int,
    *,
    forking: bool = True,
) -> Iterator[Federation]:
    """A TLS SuperLink with ``--enable-supernode-auth`` and ``nodes`` registered SuperNodes,
    SuperNode ``d`` serving the device ``tmp_path/device-<d>`` (its key
    ``certs.supernodes[d]``), each activated over TLS; ``forking``: Stamen's SuperNodes with
    their forking SuperExecs (a ClientApp starts without importing torch again). Every
    process stopped on exit, the ServerApps the SuperLink started included."""
    port = free_port()
    env = flower_home(tmp_path / "home", "test", port, certs.ca_certificate)
    log = tmp_path / "superlink.log"
    command = superlink_command(certs, port, tmp_path, "--enable-supernode-auth")
    with ExitStack() as stack:
        stack.callback(stop_serverapps, env["FLWR_HOME"])
        link = start_superlink(stack, command, env=env, log=log, what="start")
        ids, _ = enrol_supernodes(
            stack, certs, nodes, port, tmp_path, federation="test", env=env, forking=forking
        )
        wait_activated(ids, link=link, log=log, how="connecting over TLS")
        yield Federation(env, link, log)


def serverapps(home: str) -> list[int]:
    """The ServerApp processes started for the Flower home ``home`` (by the SuperLink)."""
    found = subprocess.run(["pgrep", "-f", "flwr-serverapp"], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split() if _home(int(p)) == home]


def stop_serverapps(home: str) -> None:
    """Kill the ServerApps of ``home`` (one left running when its SuperLink stopped first)."""
    for pid in serverapps(home):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _home(pid: int) -> str | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    values = dict(v.split(b"=", 1) for v in environ if b"=" in v)
    home = values.get(b"FLWR_HOME")
    return None if home is None else home.decode()


@dataclass(frozen=True)
class FlwrRun:
    """A ``flwr run --stream`` in progress and the file its output goes to."""

    proc: subprocess.Popen
    log: Path

    def failure(self) -> str:
        """What to show when the run failed: from the ServerApp's traceback on, when it
        raised one (Flower streams it before its exit code), else the log's tail."""
        output = text(self.log)
        start = output.find(SERVERAPP_RAISED)
        return output[start:][:8000] if start >= 0 else output[-4000:]


def start_run(tmp_path: Path, federation: Federation, run_config: dict[str, object]) -> FlwrRun:
    """``flwr run`` of the deployment app on ``federation`` with ``run_config`` (values as
    ``--run-config`` takes them: strings quoted), its output in ``tmp_path/flwr-run-<k>.log``."""
    config = " ".join(f"{k}={v}" for k, v in run_config.items())
    log = tmp_path / f"flwr-run-{len(list(tmp_path.glob('flwr-run-*.log')))}.log"
    return FlwrRun(start_flwr_run(APP, "test", config, env=federation.env, log=log), log)


def round_records(checkpoints: Path) -> list[dict]:
    """The round records of ``checkpoints/rounds.jsonl`` (none before the first)."""
    log = checkpoints / "rounds.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def finish_run(run: FlwrRun, checkpoints: Path, rounds: int) -> list[dict]:
    """Wait for ``flwr run`` and for ``rounds`` rounds in ``checkpoints``' log (the run goes
    on in the SuperLink even when ``--stream`` ends early); the rounds. A ServerApp that
    raised fails the test at once, with its traceback."""
    deadline = time.monotonic() + RUN_S
    try:
        run.proc.wait(timeout=RUN_S)
    except subprocess.TimeoutExpired:
        run.proc.kill()
        pytest.fail(f"flwr run: not within {RUN_S} s:\n{run.failure()}")
    while len(round_records(checkpoints)) < rounds and time.monotonic() < deadline:
        if SERVERAPP_RAISED in text(run.log):
            pytest.fail(f"flwr run: the ServerApp failed:\n{run.failure()}")
        time.sleep(0.5)
    return round_records(checkpoints)
