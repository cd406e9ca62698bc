"""Devices' identities on Flower's deployment runtime over 127.0.0.1: a SuperLink with TLS
and SuperNode authentication, three registered SuperNodes, and a run whose device
registry (``devices``, the ``devices.toml`` that ``stamen certs make`` wrote) gives each
node the id its key is registered under. One node declares another device's id in its
``--node-config``: it is not believed (self-declared, it would have left out both itself
and the device it claims), and the round trains all three."""

from __future__ import annotations

import json
import subprocess
import time
from contextlib import ExitStack

import pytest
from helpers.deployment_runs import release_init, seed_devices
from helpers.loopback import (
    flower_home,
    free_port,
    register_supernode,
    start_flwr_run,
    start_superlink,
    start_supernode,
    superlink_command,
    text,
    wait_activated,
)
from helpers.loopback_runs import APP, RUN_S

from stamen.server.certs import make_certificates
from stamen.server.deployment import SELF_DECLARED

pytestmark = pytest.mark.slow

NODES = 3
#: Each node's declared device id: node 0 claims device 2's.
DECLARED = [2, 1, 2]


def test_a_forged_device_id_is_not_believed_and_the_round_trains_every_device(tmp_path):
    certs = make_certificates(tmp_path / "certs", supernodes=NODES)
    _, key = release_init(tmp_path, dim=4)
    seed_devices(tmp_path, key, NODES)
    port = free_port()
    env = flower_home(tmp_path / "home", "test", port, certs.ca_certificate)
    log = tmp_path / "superlink.log"
    link_cmd = superlink_command(certs, port, tmp_path, "--enable-supernode-auth", in_memory=True)
    config = {
        "releases": f"'{tmp_path / 'releases'}'",
        "checkpoints": f"'{tmp_path / 'checkpoints'}'",
        "signing-key": f"'{key}'",
        "devices": f"'{certs.registry}'",
        "population": NODES,
        "num-server-rounds": 1,
    }
    run_log = tmp_path / "flwr-run.log"
    rounds_log = tmp_path / "checkpoints" / "rounds.jsonl"
    with ExitStack() as stack:
        link = start_superlink(stack, link_cmd, env=env, log=log, what="start")
        ids = [register_supernode(n.public_key, "test", env) for n in certs.supernodes]
        for d in range(NODES):
            start_supernode(
                stack, certs, d, port, tmp_path, env=env, forking=True, declared=DECLARED[d]
            )
        wait_activated(ids, link=link, log=log, how="connecting over TLS")
        run_config = " ".join(f"{k}={v}" for k, v in config.items())
        run = start_flwr_run(APP, "test", run_config, env=env, log=run_log)
        try:
            run.wait(timeout=RUN_S)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait(timeout=30)
            pytest.fail(f"flwr run: not within {RUN_S} s:\n{text(run_log)[-4000:]}")
        # the run goes on in the SuperLink when --stream ends early: wait for its status
        status_file = tmp_path / "checkpoints" / "status.json"
        for _ in range(int(RUN_S / 0.5)):
            if status_file.exists() and '"running"' not in text(status_file):
                break
            time.sleep(0.5)
    status = json.loads(text(status_file))
    assert status["status"] == "completed", (status, text(run_log)[-4000:])
    assert status["warnings"] == []  # identities came from the registry
    assert SELF_DECLARED not in text(run_log)
    (record,) = [json.loads(line) for line in rounds_log.read_text().splitlines()]
    assert record["round"] == 1 and record["devices"] == NODES and record["failures"] == 0
    assert "unidentified" not in record, record
