"""``stamen simulate --ray-address``: the same simulation on a two-node Ray cluster started
on 127.0.0.1 (``ray start --head`` and ``ray start --address``), both stopped by the test.
The head offers no CPUs, so every simulated device runs on the second node: the run can
only finish if the federation really spread across the cluster."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from helpers.loopback import BIN, free_port, poll, running, text
from helpers.tiny_simulation import tiny_config

pytestmark = pytest.mark.slow

RUN_S = 600


def _ray(*args: str) -> list[str]:
    return [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *args]


@contextmanager
def _cluster(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    address = f"127.0.0.1:{port}"
    # Ray's Unix sockets live under --temp-dir: keep its path short
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "RAY_USAGE_STATS_ENABLED": "0", "HOME": str(tmp_path)}
    head = _ray("--head", "--node-ip-address", "127.0.0.1", "--port", str(port))
    head += ["--num-cpus", "0", "--include-dashboard", "false", "--temp-dir", str(temp)]
    worker = _ray("--address", address, "--node-ip-address", "127.0.0.1", "--num-cpus", "2")
    try:
        with ExitStack() as stack:
            log = tmp_path / "ray-head.log"
            proc = stack.enter_context(running(head, env=env, log=log))
            poll(lambda: "Ray runtime started" in text(log), proc=proc, log=log, what="Ray head")
            log = tmp_path / "ray-worker.log"
            proc = stack.enter_context(running(worker, env=env, log=log))
            poll(lambda: "Ray runtime started" in text(log), proc=proc, log=log, what="Ray node")
            yield address
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    left = subprocess.run(["pgrep", "-f", str(temp)], capture_output=True, text=True)
    assert not left.stdout.split(), f"Ray processes left running: {left.stdout}"


def test_simulate_runs_its_devices_on_a_two_node_ray_cluster(tmp_path) -> None:
    config = tiny_config(tmp_path, users=20, items=200, epochs=2)
    out = tmp_path / "out"
    with _cluster(tmp_path) as address:
        command = [str(BIN / "stamen"), "simulate", "--dataset", "synthetic", "--rounds", "2"]
        command += ["--clients-per-round", "5", "--config", str(config), "--output", str(out)]
        command += ["--ray-address", address]
        done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((out / "results.json").read_text())
    assert record["config"]["ray_address"] == address
    rounds = record["federated"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["devices"] == 5 and not r.get("failures") for r in rounds)
