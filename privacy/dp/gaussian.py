"""The Gaussian-sum mechanism: the one place where a sum of device vectors gets its noise.

Every device's vector is bounded in L2 norm by ``sensitivity`` (a device clips its own);
noise of standard deviation ``sigma = noise_multiplier × sensitivity`` makes the sum
(ε, δ)-DP for one person, and the run's Opacus accountant composes the releases. Two
variants, by where the noise comes from:

- :class:`CentralGaussianSum`: the server adds N(0, σ²) to the sum it received (after
  SecAgg+ it sees only the sum);
- :class:`DistributedGaussianSum`: each of the ``n`` devices adds a share of standard
  deviation ``σ / sqrt(n)`` before masking, so nobody ever sees a noise-free sum; the
  server adds nothing (a simulation that replays the devices draws their shares as one
  sum, which has the same distribution).

Training (DP-FedAvg), private ALS and the analytics queries (trending counts, secure
evaluation) all release through this mechanism; :data:`MECHANISMS` maps a DP mode to its
variant. Draws come from the run's named streams (``stamen.privacy.dp.streams``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from stamen.privacy.dp.accountant import PrivacyAccountant
from stamen.privacy.dp.streams import Purpose, Streams
from stamen.privacy.dp.user import noise_share_std

__all__ = ["MECHANISMS", "CentralGaussianSum", "DistributedGaussianSum", "GaussianSum"]

#: Relative slack on a plain update's norm check (float32 rounding of a clipped update).
_NORM_SLACK = 1e-4


class GaussianSum(ABC):
    """Gaussian noise on sums of vectors of L2 norm at most ``sensitivity``.

    Args:
        noise_multiplier: z; the noise on a sum has standard deviation ``z × sensitivity``.
        sensitivity: the most one device's vector may move the sum (its clip norm).
        accountant: charged once per release or skipped round (several mechanisms may
            share one: private ALS's count and statistics releases).
        streams: the run's random streams.
        purpose: whose noise stream this mechanism draws from.
    """

    #: The DP mode this variant implements (``UserDP.mode``).
    mode: ClassVar[str]

    def __init__(
        self,
        *,
        noise_multiplier: float,
        sensitivity: float,
        accountant: PrivacyAccountant,
        streams: Streams,
        purpose: Purpose = Purpose.TRAINING,
    ) -> None:
        self.noise_multiplier = noise_multiplier
        self.sensitivity = sensitivity
        self.accountant = accountant
        self.streams = streams
        self.purpose = purpose

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(z={self.noise_multiplier:.4g}, "
            f"sensitivity={self.sensitivity:g}, purpose={self.purpose.name})"
        )

    @property
    def sigma(self) -> float:
        """Standard deviation of the noise on the sum."""
        return self.noise_multiplier * self.sensitivity

    @abstractmethod
    def share_std(self, devices: int) -> float:
        """Standard deviation of the noise share each of ``devices`` devices adds (0: none)."""

    @abstractmethod
    def plain_bound(self) -> float:
        """The largest norm a device's vector may have when the server sees it unmasked
        (``inf`` where the device added its own noise: then only its shape and finiteness
        can be checked)."""

    @abstractmethod
    def _server_noise(self, rnd: int, *, simulated_shares: bool) -> np.random.Generator | None:
        """The stream of the noise added to round ``rnd``'s sum here (``None``: none)."""

    def release_sum(self, total: np.ndarray, *, rnd: int) -> np.ndarray:
        """Release round ``rnd``'s ``total`` (float64): its noise, and the accountant
        charged."""
        rng = self._server_noise(rnd, simulated_shares=False)
        if rng is not None:
            total = total + rng.normal(0.0, self.sigma, total.shape)
        self.accountant.step()
        return total

    def release_mean(
        self,
        mean: list[np.ndarray],
        *,
        rnd: int,
        devices: int,
        expected: int,
        simulated_shares: bool = False,
    ) -> list[np.ndarray]:
        """Release round ``rnd``'s mean of ``devices`` updates as DP-FedAvg's
        fixed-denominator estimate (McMahan et al. 2018): the sum over the ``devices``
        that reported divided by the *expected* cohort, so one person moves it by at most
        ``sensitivity / expected`` whatever the Poisson draw; its noise (standard deviation
        ``σ / expected``) and the accountant charged. ``simulated_shares``: draw the
        devices' noise shares here as one sum (a simulation that did not add them)."""
        mean = [a * np.float32(devices / expected) for a in mean]
        rng = self._server_noise(rnd, simulated_shares=simulated_shares)
        if rng is not None:
            std = self.sigma / expected
            mean = [a + rng.normal(0.0, std, a.shape).astype(np.float32) for a in mean]
        self.accountant.step()
        return mean

    def skip(self) -> None:
        """Charge a round that drew its cohort and then released nothing (the draw is not
        data-free)."""
        self.accountant.step()

    def spent(self) -> dict[str, float]:
        """The (ε, δ) spent so far."""
        return {"epsilon": self.accountant.epsilon, "delta": self.accountant.settings.delta}

    def report(self) -> dict[str, Any]:
        """The accountant's report with the mechanism's mode."""
        return {**self.accountant.report(), "mode": self.mode}


class CentralGaussianSum(GaussianSum):
    """The server adds the noise to the sum."""

    mode = "central"

    def share_std(self, devices: int) -> float:
        """None: the devices add no noise."""
        return 0.0

    def plain_bound(self) -> float:
        """The clip norm (with float32 slack): the device's clipped vector arrives as is."""
        return self.sensitivity * (1 + _NORM_SLACK)

    def _server_noise(self, rnd: int, *, simulated_shares: bool) -> np.random.Generator | None:
        return self.streams.central_noise(rnd, self.purpose)


class DistributedGaussianSum(GaussianSum):
    """Each device adds its share of the noise before masking."""

    mode = "distributed"

    def share_std(self, devices: int) -> float:
        """``σ / sqrt(devices)``: ``devices`` shares sum to the full noise."""
        return noise_share_std(
            noise_multiplier=self.noise_multiplier, clip_norm=self.sensitivity, cohort=devices
        )

    def plain_bound(self) -> float:
        """No bound: the device's noise share is in its vector."""
        return math.inf

    def _server_noise(self, rnd: int, *, simulated_shares: bool) -> np.random.Generator | None:
        return self.streams.noise_shares(rnd) if simulated_shares else None


#: The mechanism of each DP mode.
MECHANISMS: dict[str, type[GaussianSum]] = {
    cls.mode: cls for cls in (CentralGaussianSum, DistributedGaussianSum)
}
