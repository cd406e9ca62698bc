"""A plain round whose reply from one living device never comes ends at the deployment's
``reply-timeout`` (its default, ``REPLY_TIMEOUT_S``: a healthy device answers within it on a
loaded machine, which a shorter test-only timeout need not), the device recorded as a
dropout, rather than waiting out the message's time to live (Flower 1.42's plain workflows
give their stages no timeout). The reply is lost with its SuperNode online and
heartbeating, so the SuperLink reports nothing (a SuperNode that left would be reported
unavailable): its ClientApp executor is stopped, as one that hangs or died would be; a
SuperNode whose upload of a reply's objects the SuperLink answered with an error drops
the reply and goes on ("Failed to send message") with the same effect."""

from __future__ import annotations

import os
import signal
from contextlib import ExitStack, suppress

import pytest
from helpers.deployment_runs import release_init, seed_devices
from helpers.loopback import (
    flower_home,
    free_port,
    register_supernode,
    start_superlink,
    start_supernode,
    superlink_command,
    wait_activated,
)
from helpers.loopback_runs import Federation, finish_run, start_run, stop_serverapps

from stamen.server.certs import make_certificates
from stamen.server.deployment import REPLY_TIMEOUT_S

pytestmark = pytest.mark.slow

NODES = 3


def _resume(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGCONT)


def test_a_lost_reply_ends_the_plain_round_at_the_reply_timeout(tmp_path) -> None:
    certs = make_certificates(tmp_path / "certs", supernodes=NODES)
    _, key = release_init(tmp_path)
    seed_devices(tmp_path, key, NODES)
    port = free_port()
    env = flower_home(tmp_path / "home", "test", port, certs.ca_certificate)
    log = tmp_path / "superlink.log"
    config = {
        "releases": f"'{tmp_path / 'releases'}'",
        "checkpoints": f"'{tmp_path / 'checkpoints'}'",
        "signing-key": f"'{key}'",
        "devices": f"'{certs.registry}'",  # identities from the keys: training is the first ask
        "population": NODES,
        "num-server-rounds": 1,
        "clients-per-round": NODES,
        "secure-aggregation": "false",
    }
    with ExitStack() as stack:
        stack.callback(stop_serverapps, env["FLWR_HOME"])
        command = superlink_command(certs, port, tmp_path, "--enable-supernode-auth")
        link = start_superlink(stack, command, env=env, log=log, what="start")
        ids = [
            register_supernode(certs.supernodes[d].public_key, "test", env) for d in range(NODES)
        ]
        executors = [
            start_supernode(
                stack,
                certs,
                d,
                port,
                tmp_path,
                env=env,
                forking=True,
                node_config="secure-aggregation='optional'",
            )[1][1]  # its forking SuperExec
            for d in range(NODES)
        ]
        wait_activated(ids, link=link, log=log, how="connecting over TLS")
        victim = executors[-1]
        os.killpg(victim.pid, signal.SIGSTOP)  # its SuperNode stays online, its reply never comes
        stack.callback(_resume, victim.pid)  # before `running` stops it
        run = start_run(tmp_path, Federation(env, link, log), config)
        rounds = finish_run(run, tmp_path / "checkpoints", 1)
    assert [r["round"] for r in rounds] == [1], run.failure()
    (record,) = rounds
    assert record["cohort"] == NODES and record["devices"] == NODES - 1, record
    assert record["dropouts"] == 1 and "timeout" in record["dropout_reason"], record
    assert record["failures"] == 0 and "failed" not in record and "release" in record, record
    assert record["seconds"] >= REPLY_TIMEOUT_S  # the stage waited its timeout for the reply
