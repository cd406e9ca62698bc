"""The deployment's Prometheus endpoint: the figures of ``rounds.jsonl``'s records, served on
127.0.0.1 and parsed back with ``prometheus_client``'s own parser."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stamen.errors import ConfigError
from stamen.server.deployment import Deployment
from stamen.server.metrics import RunMetrics, parse_address
from stamen.server.rounds import PrivacySpent, RoundRecord


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_rounds_figures_are_scraped_as_recorded() -> None:
    records = [
        RoundRecord(
            round=1,
            cohort=3,
            devices=3,
            failures=0,
            upload_bytes_per_device=874640,
            privacy=PrivacySpent(epsilon=4.22, delta=1 / 3),
            release="release-000001.stamen",
        ),
        RoundRecord(round=2, skipped="Poisson cohort of 1 device, below the 2 this round needs"),
        RoundRecord(
            round=3,
            cohort=3,
            devices=1,
            failures=2,
            failure_reasons=["device 4: SecureAggregationRequired: plain", "timeout: 20 s"],
            dropouts=1,
            privacy=PrivacySpent(epsilon=7.99, delta=1 / 3),
            release="release-000002.stamen",
        ),
        RoundRecord(round=4, cohort=3, devices=0, failed="SecAgg+ halted without an aggregate"),
    ]
    metrics = RunMetrics(epsilon_budget=8.0)
    host, port = metrics.serve("127.0.0.1:0")
    try:
        assert host == "127.0.0.1" and port > 0
        for record in records:
            metrics.observe(record)
        got = _scrape(port)
    finally:
        metrics.close()
    assert got[("stamen_rounds_total", (("outcome", "completed"),))] == 2
    assert got[("stamen_rounds_total", (("outcome", "skipped"),))] == 1
    assert got[("stamen_rounds_total", (("outcome", "failed"),))] == 1
    assert got[("stamen_round", ())] == 4
    assert got[("stamen_cohort_devices", ())] == 3 and got[("stamen_aggregated_devices", ())] == 0
    assert got[("stamen_device_failures_total", (("reason", "device 4"),))] == 1
    assert got[("stamen_device_failures_total", (("reason", "timeout"),))] == 1
    assert got[("stamen_dropouts_total", ())] == 1
    assert got[("stamen_epsilon_spent", ())] == 7.99
    assert got[("stamen_epsilon_remaining", ())] == pytest.approx(0.01)
    assert got[("stamen_delta", ())] == pytest.approx(1 / 3)
    assert got[("stamen_upload_bytes_per_device", ())] == 874640
    assert got[("stamen_release_number", ())] == 2
    assert got[("stamen_round_duration_seconds", ())] >= 0
    with pytest.raises(OSError):  # closed with the run
        _scrape(port)


@pytest.mark.parametrize("address", ["9464", "localhost:", ":9464", "127.0.0.1:99999", "host:x"])
def test_a_bad_address_is_named(address: str) -> None:
    with pytest.raises(ConfigError, match=f"metrics-address '{address}'"):
        parse_address(address)


def test_the_run_config_key_is_checked_before_the_run(tmp_path) -> None:
    config = {
        "releases": str(tmp_path / "releases"),
        "checkpoints": str(tmp_path / "checkpoints"),
        "signing-key": str(tmp_path / "release.key"),
    }
    assert Deployment({**config, "metrics-address": ""}).metrics_address is None
    assert Deployment({**config, "metrics-address": "[::1]:9464"}).metrics_address == "[::1]:9464"
    with pytest.raises(ConfigError, match="metrics-address 'nowhere'"):
        Deployment({**config, "metrics-address": "nowhere"})
