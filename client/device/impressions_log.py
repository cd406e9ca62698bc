"""Logging what a device showed and estimating other policies on it (a part of
``Device``; the estimators are in ``stamen.client.device.impressions``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from stamen.client.device.core import DeviceCore
from stamen.client.device.impressions import Impression, engagement_rewards, ips_estimate
from stamen.client.device.serving import Recommendation

__all__ = ["ImpressionsMixin"]


class ImpressionsMixin(DeviceCore):
    """The impression log and off-policy estimates (a part of ``Device``)."""

    def log_shown(
        self, recommendations: Sequence[Recommendation], *, at: float | None = None
    ) -> int:
        """Log a list the app showed, in the order shown, as one request: each slot's
        position, item, propensity and source, and the seconds ``recommend`` took to build
        the list (``Recommendation.latency_s``), in the encrypted store (never sent). The
        latency is recorded only when every slot carries the same one (one list from
        ``recommend``); a list the app built or merged from several is logged without one
        (``None``). Returns the request's number."""
        when = time.time() if at is None else float(at)
        latencies = {r.latency_s for r in recommendations}
        latency = latencies.pop() if len(latencies) == 1 else None
        with self._lock:
            store = self._open_store()
            request = store.next_request()
            store.log_impressions(
                Impression(request, position, r.item, r.propensity, r.source, when, latency)
                for position, r in enumerate(recommendations)
            )
            return request

    def impressions(self) -> list[Impression]:
        """Every logged impression, oldest first."""
        with self._lock:
            return self._open_store().impressions()

    def policy_value(
        self, target: Callable[[Impression], float], *, window_s: float = 86400.0
    ) -> tuple[float, float]:
        """How a target policy would have done on this device's logged impressions: the
        inverse-propensity estimate of its engagements per shown slot, and its standard
        error (``stamen.client.device.impressions``). ``target(impression)`` is the probability
        the target policy gives that item in that slot; rewards are the person's positive
        events within ``window_s`` after each impression. Computed here, never sent."""
        with self._lock:
            store = self._open_store()
            logged = store.impressions()
            rewards = engagement_rewards(
                logged, store.events(), window_s=window_s, rating_threshold=self.rating_threshold
            )
        return ips_estimate(
            rewards, np.array([i.propensity for i in logged]), np.array([target(i) for i in logged])
        )
