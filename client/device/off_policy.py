"""Off-policy evaluation on the device: what a person contributes to the estimate of a
candidate policy's value (issue 28) — a policy shipped in a release but never run for them.

**Inputs.** A person's logged slots over a window: for each slot, the reward ``r ∈ {0, 1}``
(engaged within the attribution window, :func:`engagement_rewards`), the logging policy's
propensity ``p ∈ (0, 1]`` of the item it showed there (``Impression.propensity``) and each of
``K`` candidate policies' probability ``π_c ∈ [0, 1]`` of the same item in the same slot. The
batched functions take *slot groups* (rows are people, columns groups of slots that share an
item, propensity and candidate probabilities): ``shown`` slots of which ``engaged`` were
rewarded; a single slot is a group with ``shown = 1``.

**Clipping** (:class:`OffPolicyBounds`), so that one person's influence is bounded:

- *slots*: a person with ``m > L`` slots (``L = max_slots``) has every slot total multiplied by
  ``L / m`` (their average reward and weight are kept; they count as ``L`` slots);
- *importance weights*: ``w_c = min(π_c / p, W_c)`` (``W_c = max_weight``, one per candidate or
  shared). This is a bias/variance trade-off: a weight above ``W_c`` is a slot the candidate
  favours far more than the logging policy did, so clipping it biases the candidate's value
  *down* (towards what the logging policy's overlap can show), while a large ``W_c`` lets a
  few rare slots carry the estimate and, since each coordinate is divided by ``W_c``, raises
  the DP noise on the value in proportion. A candidate whose weights never exceed ``W_c`` is
  estimated without clipping bias.

**Statistics.** With ``s = min(1, L / m)``, a person's first moments, each in ``[0, 1]``::

    z = [n, g, a_1, b_1, …, a_K, b_K]          (d = 2 + 2K coordinates)
    n   = s · m / L                            (slots)
    g   = s · Σ r / L                          (the logging policy's rewards)
    a_c = s · Σ w_c r / (L · W_c)              (candidate c's importance-weighted rewards)
    b_c = s · Σ w_c / (L · W_c)                (candidate c's importance weights)

Their sums over people give the IPS value per slot ``W_c · Σa_c / Σn`` (= ``Σ w r / Σ slots``),
the SNIPS value ``Σa_c / Σb_c`` (= ``Σ w r / Σ w``) and the logging policy's value ``Σg / Σn``
(= ``Σ r / Σ slots``). People are the independent units (a person's slots are not
independent of each other), so the server's delta-method variance needs the second moments
over people: the contribution is ``z`` followed by the upper triangle of ``z zᵀ`` (row-major,
``numpy.triu_indices(d)``): :func:`contributions`, of :func:`width` ``= d + d (d + 1) / 2``
coordinates. ``stamen.server.off_policy_stats`` turns the (noisy) sums into the estimates.

**Sensitivity.** Every coordinate lies in ``[0, 1]``, so one person's vector has squared L2
norm at most ``d + d (d + 1) / 2`` (reached when every slot of ``L`` is rewarded and every
weight is at its clip): :func:`sensitivity` ``= sqrt(width)``, 5.2 for two candidates.

Imports numpy and the standard library only (the device's serving path).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from stamen.client.device.events import RATING_THRESHOLD, Event
from stamen.client.device.impressions import Impression, engagement_rewards
from stamen.models.off_policy import dimension

__all__ = [
    "OffPolicyBounds",
    "contributions",
    "device_contribution",
    "first_moments",
    "summed_contributions",
]


@dataclass(frozen=True)
class OffPolicyBounds:
    """The per-person clip (module docstring): at most ``max_slots`` slots, each importance
    weight at most ``max_weight`` (a number for every candidate, or one per candidate), and
    the attribution window of a reward in seconds."""

    max_slots: int = 50
    max_weight: float | tuple[float, ...] = 10.0
    attribution_s: float = 86400.0

    def __post_init__(self) -> None:
        if isinstance(self.max_slots, bool) or not isinstance(self.max_slots, int):
            raise ValueError(f"max_slots must be an integer (got {self.max_slots!r})")
        if self.max_slots < 1:
            raise ValueError(f"max_slots must be at least 1 (got {self.max_slots})")
        weights = np.atleast_1d(np.asarray(self.max_weight, np.float64))
        if weights.ndim != 1 or not len(weights) or not np.all(np.isfinite(weights)):
            raise ValueError(f"max_weight must be finite numbers (got {self.max_weight!r})")
        if np.any(weights < 1):
            raise ValueError(f"max_weight must be at least 1 (got {self.max_weight!r})")
        if not self.attribution_s > 0:
            raise ValueError(f"attribution_s must be positive (got {self.attribution_s})")

    def weights(self, candidates: int) -> np.ndarray:
        """Each candidate's weight clip ``W_c``, shape ``(candidates,)``."""
        weights = np.atleast_1d(np.asarray(self.max_weight, np.float64))
        if len(weights) == 1:
            return np.full(candidates, weights[0])
        if len(weights) != candidates:
            raise ValueError(f"max_weight has {len(weights)} entries for {candidates} candidates")
        return weights


def _checked(
    engaged: np.ndarray, shown: np.ndarray, logged: np.ndarray, target: np.ndarray
) -> tuple[np.ndarray, ...]:
    engaged, shown, logged, target = (
        np.asarray(a, np.float64) for a in (engaged, shown, logged, target)
    )
    if shown.ndim != 2:
        raise ValueError(f"shown must have shape (people, slots) (got {shown.shape})")
    if engaged.shape != shown.shape or logged.shape != shown.shape:
        raise ValueError(
            f"engaged {engaged.shape}, shown {shown.shape} and logged {logged.shape} differ"
        )
    if target.ndim != 3 or target.shape[:2] != shown.shape or target.shape[2] < 1:
        raise ValueError(f"target must have shape (people, slots, candidates) (got {target.shape})")
    if not np.all(np.isfinite(shown)) or np.any(shown < 0):
        raise ValueError("shown must be non-negative counts")
    if not np.all(np.isfinite(engaged)) or np.any((engaged < 0) | (engaged > shown)):
        raise ValueError("engaged must lie in [0, shown]")
    used = shown > 0
    if np.any(~((logged > 0) & (logged <= 1)) & used):
        raise ValueError("logged propensities of shown slots must lie in (0, 1]")
    if not np.all(np.isfinite(target)) or np.any((target < 0) | (target > 1)):
        raise ValueError("target probabilities must lie in [0, 1]")
    return engaged, shown, np.where(used, logged, 1.0), target


def first_moments(
    engaged: np.ndarray,
    shown: np.ndarray,
    logged: np.ndarray,
    target: np.ndarray,
    *,
    bounds: OffPolicyBounds,
) -> np.ndarray:
    """Every person's clipped first moments ``z`` (module docstring), shape ``(people, d)``,
    from slot groups: ``engaged``, ``shown`` and ``logged`` of shape ``(people, groups)`` and
    ``target`` of shape ``(people, groups, K)``.

    Raises:
        ValueError: shapes disagree, ``engaged`` is outside ``[0, shown]``, a shown slot's
            propensity is outside ``(0, 1]`` or a candidate's probability outside ``[0, 1]``.
    """
    engaged, shown, logged, target = _checked(engaged, shown, logged, target)
    k = target.shape[2]
    clip = bounds.weights(k)
    limit = float(bounds.max_slots)
    slots = shown.sum(axis=1)
    scale = np.minimum(1.0, limit / np.maximum(slots, 1.0)) / limit
    weight = np.minimum(target / logged[..., None], clip)
    z = np.empty((len(shown), dimension(k)))
    z[:, 0] = slots * scale
    z[:, 1] = engaged.sum(axis=1) * scale
    z[:, 2::2] = np.einsum("psk,ps->pk", weight, engaged) * scale[:, None] / clip
    z[:, 3::2] = np.einsum("psk,ps->pk", weight, shown) * scale[:, None] / clip
    return np.clip(z, 0.0, 1.0)  # only rounding can step outside


def contributions(z: np.ndarray) -> np.ndarray:
    """Every person's contribution ``[z, upper triangle of z zᵀ]``, shape ``(people, width)``,
    from :func:`first_moments`' ``z``."""
    z = np.asarray(z, np.float64)
    rows, cols = np.triu_indices(z.shape[-1])
    return np.concatenate([z, z[..., rows] * z[..., cols]], axis=-1)


def summed_contributions(z: np.ndarray) -> np.ndarray:
    """The sum of :func:`contributions` over people (the second-to-last axis of ``z``, shape
    ``(..., people, d)``), shape ``(..., width)``, without building every vector."""
    z = np.asarray(z, np.float64)
    rows, cols = np.triu_indices(z.shape[-1])
    second = (np.swapaxes(z, -1, -2) @ z)[..., rows, cols]
    return np.concatenate([z.sum(axis=-2), second], axis=-1)


def device_contribution(
    impressions: Sequence[Impression],
    events: Iterable[Event],
    target: np.ndarray,
    *,
    start: float,
    end: float,
    bounds: OffPolicyBounds | None = None,
    rating_threshold: float | None = RATING_THRESHOLD,
) -> np.ndarray:
    """The vector one device contributes over ``[start, end)``: from its impression log
    (each impression's logged ``propensity``), its events (rewards by
    :func:`engagement_rewards` within ``bounds.attribution_s``) and ``target``, shape
    ``(len(impressions), K)``: each candidate's probability of the impression's item in its
    slot. L2 norm at most :func:`sensitivity` ``(K)``.

    Raises:
        ValueError: ``target`` does not have one row per impression, or a value is out of
            range (:func:`first_moments`).
    """
    bounds = bounds or OffPolicyBounds()
    target = np.asarray(target, np.float64)
    if target.ndim != 2 or len(target) != len(impressions):
        raise ValueError(
            f"target must have shape ({len(impressions)}, candidates) (got {target.shape})"
        )
    keep = [i for i, imp in enumerate(impressions) if start <= imp.at < end]
    shown = [impressions[i] for i in keep]
    rewards = engagement_rewards(
        shown, events, window_s=bounds.attribution_s, rating_threshold=rating_threshold
    )
    z = first_moments(
        rewards.reshape(1, -1),
        np.ones((1, len(shown))),
        np.array([[imp.propensity for imp in shown]], np.float64).reshape(1, -1),
        target[keep].reshape(1, len(shown), target.shape[1]),
        bounds=bounds,
    )
    return contributions(z)[0]
