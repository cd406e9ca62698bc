"""The closed control plane on 127.0.0.1: a TLS SuperLink with SuperNode authentication
behind nginx (``stamen deploy proxy-config``). Through the device-facing address a client
holding ``ca.crt`` can neither enrol a node nor list runs, and reaches nothing but the
Fleet API; the operator enrols the SuperNodes through the operator-facing address; the
registered SuperNodes, pointed at the device-facing address, train a round of SecAgg+
through the proxy. Every process is stopped on exit; every wait is bounded."""

from __future__ import annotations

import http.client
import json
import re
import ssl
from contextlib import ExitStack
from pathlib import Path

import pytest
from helpers.deployment_runs import release_init, seed_devices
from helpers.loopback import (
    enrol_supernodes,
    flower_home,
    flwr,
    free_port,
    listening,
    poll,
    running,
    start_flwr_run,
    start_superlink,
    start_supernode,
    superlink_command,
    text,
    wait_activated,
    wait_logged,
)
from helpers.paths import ROOT
from typer.testing import CliRunner

from stamen.server.certs import make_certificates
from stamen.simulation.cli.commands import app

pytestmark = pytest.mark.slow

APP = ROOT / "deploy"
NODES = 3  # the deploy app's SecAgg+ shares
RUN_S = 300  # `flwr run` of one round, bounded


def _request(port: int, ca: Path, method: str, path: str) -> tuple[int, str]:
    """One HTTPS request to 127.0.0.1:``port`` trusting only ``ca``: status and body."""
    context = ssl.create_default_context(cafile=str(ca))
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    try:
        connection.request(method, path, body=b"" if method == "POST" else None)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


def test_devices_reach_only_the_fleet_api_and_still_train_through_the_proxy(tmp_path, nginx):
    certs = make_certificates(tmp_path / "certs", supernodes=NODES + 1)
    _, signing_key = release_init(tmp_path, dim=8)
    seed_devices(tmp_path, signing_key, NODES)
    link_port, device_port, operator_port = free_port(), free_port(), free_port()
    result = CliRunner().invoke(
        app,
        ["deploy", "proxy-config", str(tmp_path / "proxy"), "--certs", str(certs.folder)]
        + ["--superlink", f"127.0.0.1:{link_port}"]
        + ["--device-address", f"127.0.0.1:{device_port}"]
        + ["--operator-address", f"127.0.0.1:{operator_port}", "--operator-allow", "127.0.0.1"],
    )
    assert result.exit_code == 0, (result.output, result.exception)
    proxy = tmp_path / "proxy"
    ca = certs.ca_certificate
    env = flower_home(
        tmp_path / "home", "operator", operator_port, ca, device=device_port, local=link_port
    )
    link_log, proxy_log = tmp_path / "superlink.log", tmp_path / "nginx.log"
    nginx_cmd = [nginx, "-p", str(proxy), "-c", "nginx.conf", "-g", "daemon off;"]
    with ExitStack() as stack:
        link = start_superlink(
            stack,
            superlink_command(certs, link_port, tmp_path, "--enable-supernode-auth"),
            env=env,
            log=link_log,
            what="SuperLink",
        )
        front = stack.enter_context(running(nginx_cmd, env=env, log=proxy_log))
        poll(
            lambda: listening(device_port) and listening(operator_port),
            proc=front,
            log=proxy_log,
            what="nginx listening",
        )

        # a stranger holding ca.crt, through the device-facing address: refused
        stranger = certs.supernodes[NODES]
        for args, path in [
            (["supernode", "register", str(stranger.public_key), "device"], "register-node"),
            (["ls", "device"], "list-runs"),
        ]:
            done = flwr(env, *args)
            output = done.stdout + done.stderr
            assert done.returncode != 0, output
            assert "403 Forbidden" in output and f"/v1/control/{path}" in output, output
        for method, path in [
            ("POST", "/v1/control/list-nodes"),
            ("POST", "/v1/runtime/get-nodes"),
            ("POST", "/v1/fleet/register-node"),  # a keyless node enrolling itself
            ("POST", "/v1/fleet/unregister-node"),
            ("GET", "/v1/fleet/pull-messages"),
            ("POST", "/v1/fleet/../control/list-runs"),
            ("POST", "/v1/fleet/%2e%2e/control/list-runs"),
            ("GET", "/docs"),
            ("GET", "/health"),
        ]:
            status, body = _request(device_port, ca, method, path)
            assert status == 403, (method, path, status, body)
        # forwarded: the SuperLink itself answers (a request without a node's signature)
        status, body = _request(device_port, ca, "POST", "/v1/fleet/pull-messages")
        assert "served on this address" not in body and status >= 400, (status, body)
        status, body = _request(operator_port, ca, "POST", "/v1/fleet/pull-messages")
        assert status == 403 and "Control API" in body, (status, body)

        # the operator enrols the SuperNodes through the operator-facing address; every
        # SuperNode, and the stranger's, reaches the SuperLink through the proxy only
        ids, _ = enrol_supernodes(
            stack, certs, NODES, device_port, tmp_path, federation="operator", env=env, forking=True
        )
        start_supernode(stack, certs, NODES, device_port, tmp_path, env=env, forking=True)
        wait_activated(ids, link=link, log=link_log, how="activating through the proxy")
        wait_logged(
            link_log,
            "No SuperNode found with the given public key",
            proc=link,
            what="the stranger's SuperNode refused",
        )

        # one round of SecAgg+, run by the operator through the operator-facing address
        run_config = " ".join(
            [
                f"releases='{tmp_path / 'releases'}'",
                f"checkpoints='{tmp_path / 'checkpoints'}'",
                f"signing-key='{signing_key}'",
                f"population={NODES} num-server-rounds=1",
            ]
        )
        run_log = tmp_path / "flwr-run.log"
        run = start_flwr_run(APP, "operator", run_config, env=env, log=run_log)
        try:
            run.wait(timeout=RUN_S)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait(timeout=30)
        rounds = tmp_path / "checkpoints" / "rounds.jsonl"
        poll(
            lambda: rounds.exists() and bool(rounds.read_text().strip()),
            proc=link,
            log=run_log,
            what="round 1 in rounds.jsonl",
        )
        listed = flwr(env, "ls", "operator")
        assert listed.returncode == 0 and "Run ID" in listed.stdout, listed.stdout + listed.stderr
    (record,) = [json.loads(line) for line in rounds.read_text().splitlines()]
    assert record["round"] == 1 and "failed" not in record, record
    assert record["devices"] == NODES and record.get("failures", 0) == 0, record
    assert len(list((tmp_path / "releases").glob("release-*.stamen"))) == 2  # 0 and 1
    assert text(link_log).count("Activated node_id=") == NODES
    # the training went through the proxy: the SuperNodes' Fleet calls are in its log
    access = text(proxy / "logs" / "access.log")
    for call in ("activate-node", "pull-messages", "push-messages", "push-object"):
        assert re.search(rf'"POST /v1/fleet/{call} HTTP/1.1" 200 ', access), call
    assert re.search(r'"POST /v1/control/start-run HTTP/1.1" 200 ', access)
    print({"round_seconds": round(record["seconds"], 1)})
