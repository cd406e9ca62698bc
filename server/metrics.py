"""A deployment's figures for Prometheus: what each round did, scraped over HTTP.

With the run-config key ``metrics-address`` (``host:port``; ``127.0.0.1:9464`` keeps it on
the machine) the ServerApp serves, for the length of the run, the text format Prometheus
scrapes (``prometheus_client``), updated as each round closes from the same
:class:`~stamen.server.rounds.RoundRecord` that ``rounds.jsonl`` holds:

====================================  =====================================================
``stamen_rounds_total{outcome}``      rounds closed: ``completed``, ``failed``, ``skipped``
``stamen_round``                      the last round's number
``stamen_round_duration_seconds``     seconds from the previous round's close to this one's
``stamen_cohort_devices``             devices sampled in the last round
``stamen_aggregated_devices``         updates aggregated in the last round
``stamen_device_failures_total``      devices that failed or were rejected, by ``reason``
``stamen_dropouts_total``             devices that never answered
``stamen_epsilon_spent``              user-level ε spent so far (at ``stamen_delta``)
``stamen_epsilon_remaining``          the run's ε budget less what is spent (with a budget)
``stamen_upload_bytes_per_device``    bytes each device uploaded in the last round
``stamen_release_number``             the newest release the run published
====================================  =====================================================

A failure's ``reason`` label is its text up to the first colon (a device's own words
follow it), so that the label's values stay few.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from stamen.errors import ConfigError
from stamen.server.rounds import RoundRecord

__all__ = ["RunMetrics", "parse_address"]

_RELEASE = re.compile(r"release-(\d+)\.stamen$")


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9464`` for IPv6) as a host and a port.

    Raises:
        ConfigError: not of that form.
    """
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(
            f"run config: metrics-address {address!r}: expected host:port, e.g. 127.0.0.1:9464"
        )
    return host, int(port)


class RunMetrics:
    """The figures of one run (see module docstring), in a registry of their own."""

    def __init__(self, *, epsilon_budget: float | None = None) -> None:
        self.registry = CollectorRegistry()
        #: The run's ε budget (``stamen_epsilon_remaining`` is reported only with one).
        self.epsilon_budget = epsilon_budget
        self._last = time.monotonic()
        self._stop: Callable[[], None] | None = None
        r = self.registry
        self.rounds = Counter("stamen_rounds", "Rounds closed", ["outcome"], registry=r)
        self.round = Gauge("stamen_round", "The last round's number", registry=r)
        self.duration = Gauge(
            "stamen_round_duration_seconds", "Seconds the last round took", registry=r
        )
        self.cohort = Gauge("stamen_cohort_devices", "Devices sampled", registry=r)
        self.aggregated = Gauge("stamen_aggregated_devices", "Updates aggregated", registry=r)
        self.failures = Counter(
            "stamen_device_failures", "Devices failed or rejected", ["reason"], registry=r
        )
        self.dropouts = Counter("stamen_dropouts", "Devices that never answered", registry=r)
        self.epsilon = Gauge("stamen_epsilon_spent", "User-level epsilon spent", registry=r)
        self.delta = Gauge("stamen_delta", "The delta epsilon is reported at", registry=r)
        self.remaining = Gauge("stamen_epsilon_remaining", "The epsilon budget left", registry=r)
        self.upload = Gauge("stamen_upload_bytes_per_device", "Bytes a device uploaded", registry=r)
        self.release = Gauge("stamen_release_number", "The newest release published", registry=r)
        for outcome in ("completed", "failed", "skipped"):
            self.rounds.labels(outcome)  # present from the start, at 0

    def observe(self, record: RoundRecord) -> None:
        """Fold one closed round in."""
        now = time.monotonic()
        self.duration.set(now - self._last)
        self._last = now
        outcome = "failed" if record.failed else "skipped" if record.skipped else "completed"
        self.rounds.labels(outcome).inc()
        self.round.set(record.round)
        for gauge, value in (
            (self.cohort, record.cohort),
            (self.aggregated, record.devices),
            (self.upload, record.upload_bytes_per_device),
        ):
            if value is not None:
                gauge.set(value)
        for reason in record.failure_reasons or []:
            self.failures.labels(reason.split(":")[0].strip()[:80] or "unknown").inc()
        if record.dropouts:
            self.dropouts.inc(record.dropouts)
        if record.privacy is not None:
            self.epsilon.set(record.privacy.epsilon)
            self.delta.set(record.privacy.delta)
            if self.epsilon_budget is not None:
                left = self.epsilon_budget - record.privacy.epsilon
                self.remaining.set(max(left, 0.0))
        numbered = _RELEASE.search(record.release or "")
        if numbered is not None:
            self.release.set(int(numbered[1]))

    def serve(self, address: str) -> tuple[str, int]:
        """Serve the figures at ``address`` (``host:port``; port 0: any free one) until
        :meth:`close`; returns the address bound."""
        host, port = parse_address(address)
        server, thread = start_http_server(port, addr=host, registry=self.registry)

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)

        self._stop = stop
        return host, int(server.server_address[1])

    def close(self) -> None:
        """Stop serving (if serving)."""
        if self._stop is not None:
            self._stop()
            self._stop = None
