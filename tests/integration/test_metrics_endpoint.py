"""The deployment's Prometheus endpoint during a live run: a TLS SuperLink with three
authenticated SuperNodes runs the deployment Flower App (``deploy/``) with
``metrics-address`` set; the test scrapes the endpoint while the run goes on, parses it with
``prometheus_client``'s own parser, and checks each round's figures against that round's
line of ``rounds.jsonl``."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers.deployment_runs import release_init, seed_devices
from helpers.loopback import free_port, text
from helpers.loopback_runs import secure_federation, start_run
from prometheus_client.parser import text_string_to_metric_families

from stamen.server.certs import make_certificates

NODES = 3
ROUNDS = 3  # rounds 1 and 2 are scraped while the next one runs; the endpoint closes after 3
RUN_S = 900  # a guard against a hung `flwr run` of three rounds, not a figure the test checks
BUDGET = 8.0
POLL_S = 0.2

Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(port: int) -> Scrape | None:
    """The endpoint's samples by name and labels; ``None`` while nothing answers there."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            body = response.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return None
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def _watch(port: int, run: subprocess.Popen, log: Path) -> dict[int, tuple[float, float, Scrape]]:
    """Scrape every ``POLL_S`` until ``run`` ends (at most ``RUN_S``): for each round
    number the endpoint showed, the first scrape showing it, when that scrape had answered
    and when the one before it (showing an earlier round, or nothing) had started: the
    round closed between the two."""
    seen: dict[int, tuple[float, float, Scrape]] = {}
    deadline = time.monotonic() + RUN_S
    before = time.monotonic()
    while run.poll() is None:
        if time.monotonic() > deadline:
            run.kill()
            pytest.fail(f"flwr run: not within {RUN_S} s:\n{text(log)[-4000:]}")
        started = time.monotonic()
        got = _scrape(port)
        shown = None if got is None else int(got.get(("stamen_round", ()), 0))
        if got is not None and shown and shown not in seen:
            seen[shown] = (before, time.monotonic(), got)
        before = started
        time.sleep(POLL_S)
    return seen


def test_the_endpoint_serves_each_rounds_figures_during_a_live_run(tmp_path) -> None:
    certs = make_certificates(tmp_path / "certs", supernodes=NODES)
    _, key = release_init(tmp_path)
    seed_devices(tmp_path, key, NODES)
    metrics_port = free_port()
    config = {
        "releases": f"'{tmp_path / 'releases'}'",
        "checkpoints": f"'{tmp_path / 'checkpoints'}'",
        "signing-key": f"'{key}'",
        "population": NODES,
        "num-server-rounds": ROUNDS,
        "dp": "'central'",
        "dp-epsilon": BUDGET,
        "dp-clip-norm": 0.5,
        "metrics-address": f"'127.0.0.1:{metrics_port}'",
    }
    with secure_federation(tmp_path, certs, NODES, forking=False) as federation:
        run = start_run(tmp_path, federation, config)
        run_log = run.log
        seen = _watch(metrics_port, run.proc, run_log)
        assert _scrape(metrics_port) is None  # closed with the run
    lines = (tmp_path / "checkpoints" / "rounds.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["round"] for r in records] == list(range(1, ROUNDS + 1)), text(run_log)[-4000:]
    assert {1, 2} <= set(seen), sorted(seen)
    for rnd in (1, 2):
        before, at, got = seen[rnd]
        record = records[rnd - 1]
        assert got[("stamen_rounds_total", (("outcome", "completed"),))] == rnd
        assert got[("stamen_rounds_total", (("outcome", "failed"),))] == 0
        assert got[("stamen_rounds_total", (("outcome", "skipped"),))] == 0
        assert got[("stamen_cohort_devices", ())] == record["cohort"] == NODES
        assert got[("stamen_aggregated_devices", ())] == record["devices"] == NODES
        assert got[("stamen_upload_bytes_per_device", ())] == record["upload_bytes_per_device"]
        assert got[("stamen_epsilon_spent", ())] == record["privacy"]["epsilon"]
        assert got[("stamen_delta", ())] == record["privacy"]["delta"]
        assert got[("stamen_epsilon_remaining", ())] == pytest.approx(
            BUDGET - record["privacy"]["epsilon"], rel=1e-12
        )
        (number,) = re.fullmatch(r"release-(\d+)\.stamen", record["release"]).groups()  # type: ignore[union-attr]
        assert got[("stamen_release_number", ())] == int(number)
        assert got[("stamen_dropouts_total", ())] == 0 and record["failures"] == 0
        assert not [name for name, labels in got if labels and name.startswith("stamen_device")]
        # the gauge spans the close of the previous round to this one's: it holds the
        # round's own wall time, and both closes lie between the scrapes around them
        duration = got[("stamen_round_duration_seconds", ())]
        assert record["seconds"] <= duration
        if rnd > 1:
            assert duration <= at - seen[rnd - 1][0]
