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
"""

from __future__ import annotations

import numpy as np

from stamen.privacy import Purpose, Streams

__all__ = ["sample_cohort"]


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
    ids = np.arange(population) if available is None else np.asarray(available, np.int64)
    if len(ids) and (ids.min() < 0 or ids.max() >= population):
        raise ValueError(f"device ids must lie in [0, {population})")
    rng = Streams(seed).cohort(rnd, purpose)
    if rate is not None:
        if not 0 < rate <= 1:
            raise ValueError(f"rate must be in (0, 1] (got {rate})")
        chosen = np.flatnonzero(rng.random(population) < rate)
        return np.intersect1d(chosen, ids)
    assert size is not None
    if size >= len(ids):
        return np.sort(ids)
    return np.sort(ids[rng.choice(len(ids), size, replace=False)])
