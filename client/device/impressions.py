"""What the device showed, and how another policy would have done (on the device only).

An app logs each list it shows (``Device.log_shown``): for every slot, the request it
belongs to, its position, the item, the probability the pipeline's policy gave that item
in that position (its propensity, ``Recommendation.propensity``), the stage that
earned it and the seconds ``Device.recommend`` took to build the list (``latency_s``, the
same on every slot of a request; ``None``: not measured, for a list the app built itself
or one logged before the store recorded it). The log lives in the device's encrypted store
and never leaves it.

:func:`ips_estimate` is the inverse-propensity (Horvitz-Thompson) estimate of a target
policy's value per shown slot, ``mean(r · π_target / π_logged)``, unbiased when every slot
the target policy could fill had a positive logged propensity (Li et al., 2011), with its
standard error. :func:`engagement_rewards` scores each impression 1 when the person
engaged with the item (a positive event) within ``window_s`` after it was shown.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from stamen.client.device.events import RATING_THRESHOLD, Event, is_positive

__all__ = ["Impression", "engagement_rewards", "ips_estimate"]


@dataclass(frozen=True)
class Impression:
    """One shown slot (see module docstring)."""

    request: int
    position: int
    item: str
    propensity: float
    source: str
    at: float
    latency_s: float | None = None


def engagement_rewards(
    impressions: Sequence[Impression],
    events: Iterable[Event],
    *,
    window_s: float,
    rating_threshold: float | None = RATING_THRESHOLD,
) -> np.ndarray:
    """1.0 for each impression followed by a positive event on its item within
    ``window_s`` seconds (a rating at or above ``rating_threshold``), else 0.0."""
    engaged: dict[str, list[float]] = {}
    for event in events:
        if is_positive(event.kind, event.value, rating_threshold):
            engaged.setdefault(event.item, []).append(event.at)
    return np.array(
        [
            float(any(0 <= at - i.at <= window_s for at in engaged.get(i.item, ())))
            for i in impressions
        ]
    )


def ips_estimate(
    rewards: np.ndarray, logged: np.ndarray, target: np.ndarray
) -> tuple[float, float]:
    """The inverse-propensity estimate of the target policy's mean reward per slot and
    its standard error, from each slot's reward, logged propensity and target policy's
    probability of the same item in the same slot.

    Raises:
        ValueError: lengths differ, or a logged propensity is not in (0, 1].
    """
    rewards, logged, target = (np.asarray(a, np.float64) for a in (rewards, logged, target))
    if not len(rewards) == len(logged) == len(target):
        raise ValueError("rewards, logged and target propensities differ in length")
    if len(logged) and (np.any(logged <= 0) or np.any(logged > 1)):
        raise ValueError("logged propensities must lie in (0, 1]")
    if not len(rewards):
        return float("nan"), float("nan")
    terms = rewards * target / logged
    stderr = float(terms.std(ddof=1) / np.sqrt(len(terms))) if len(terms) > 1 else float("nan")
    return float(terms.mean()), stderr
