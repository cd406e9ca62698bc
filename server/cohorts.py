"""Which devices take part in a round: seeded, over stable device identities.

Devices are named by their device id (``0 … population-1``: the partition id a device
reports, not the node id Flower assigns at random each run), so one seed picks the same
people on every run. Two samplers:

- **fixed size** (no DP): ``size`` devices uniformly without replacement among those
  connected;
- **Poisson** (user-level DP): every device independently with probability ``rate``, the
  sampling that DP-FedAvg's accountant (the subsampled Gaussian mechanism) assumes. The
  draw is made for the whole population and then restricted to the devices connected, so
  a device's inclusion never depends on who else is there, and no device is included with
  probability above ``rate``.

Memory does not grow with the ids' magnitude: a Poisson draw takes the population's
uniforms :data:`CHUNK` at a time (the same stream as one draw of them all: a cohort is the
same to the last device), and a fixed-size draw holds only the connected ids (or draws
``size`` of ``range(population)`` directly). Only the result's size and a chunk are held.
"""

from __future__ import annotations

import numpy as np

from stamen.privacy import Purpose, Streams

__all__ = ["CHUNK", "sample_cohort"]

#: Uniforms a Poisson draw holds at once (8 bytes each).
CHUNK = 1 << 16


def sample_cohort(
    population: int,
    *,
    seed: int,
    rnd: int,
    purpose: Purpose,
    size: int | None = None,
    rate: float | None = None,
    available: np.ndarray | None = None,
) -> np.ndarray:
    """Sorted device ids of round ``rnd``'s cohort (``purpose`` separates the fit and the
    evaluation cohorts); ``available`` (sorted ids) restricts it to connected devices.

    Exactly one of ``size`` (fixed size) and ``rate`` (Poisson) is given.
    """
    if (size is None) == (rate is None):
        raise ValueError("give exactly one of size (fixed-size cohort) and rate (Poisson)")
    ids = None if available is None else np.asarray(available, np.int64)
    if ids is not None and len(ids) and (ids.min() < 0 or ids.max() >= population):
        raise ValueError(f"device ids must lie in [0, {population})")
    rng = Streams(seed).cohort(rnd, purpose)
    if rate is not None:
        if not 0 < rate <= 1:
            raise ValueError(f"rate must be in (0, 1] (got {rate})")
        parts = []
        for start in range(0, population, CHUNK):
            drawn = rng.random(min(CHUNK, population - start)) < rate
            parts.append(start + np.flatnonzero(drawn))
        chosen = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return chosen if ids is None else np.intersect1d(chosen, ids)
    assert size is not None
    if ids is None:
        if size >= population:
            return np.arange(population)
        return np.sort(rng.choice(population, size, replace=False))
    if size >= len(ids):
        return np.sort(ids)
    return np.sort(ids[rng.choice(len(ids), size, replace=False)])
