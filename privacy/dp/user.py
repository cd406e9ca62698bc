"""User-level differential privacy for federated rounds (DP-FedAvg, McMahan et al. 2018).

Every device clips its whole update to L2 norm ``clip_norm``; Gaussian noise of standard
deviation ``noise_multiplier * clip_norm`` is added to the *sum* of a round's updates:

- ``central``: the server adds it after secure aggregation has produced the sum;
- ``distributed``: each of the ``n`` devices of a cohort adds a share of standard
  deviation ``noise_multiplier * clip_norm / sqrt(n)`` before masking, so no party ever
  sees a noise-free sum (the shares add up to the full noise while at least the calibrated
  number of devices report; dropouts lower it, see ``noise_share_std``).

Cohorts are sampled uniformly at rate ``q = cohort / population``; accounting treats them
as Poisson-subsampled Gaussian mechanisms, the standard approximation, with Opacus'
accountant (``stamen.privacy.dp.accountant``). ``delta`` defaults to ``1 / population``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from stamen.privacy.dp.accountant import (
    AccountantName,
    DPSettings,
    PrivacyAccountant,
    noise_for_target,
)
from stamen.privacy.dp.streams import Purpose, Streams

if TYPE_CHECKING:
    from stamen.privacy.dp.gaussian import GaussianSum

__all__ = ["UserDP", "gaussian_noise", "noise_share_std", "secagg_range_for"]


class UserDP(BaseModel):
    """User-level DP settings of a run; ``resolve`` turns them into ``DPSettings``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["off", "central", "distributed"] = "off"
    clip_norm: float = Field(1.0, gt=0, allow_inf_nan=False)
    noise_multiplier: float | None = Field(None, ge=0, allow_inf_nan=False)
    target_epsilon: float | None = Field(None, gt=0, allow_inf_nan=False)
    delta: float | None = Field(None, gt=0, lt=1)
    accountant: AccountantName = "rdp"

    @model_validator(mode="after")
    def _check(self) -> UserDP:
        if self.mode != "off" and self.noise_multiplier is None and self.target_epsilon is None:
            raise ValueError("differential privacy needs noise_multiplier or target_epsilon")
        if self.mode == "off" and (self.noise_multiplier, self.target_epsilon) != (None, None):
            # a run the user believes private must not quietly run without noise
            raise ValueError(
                "noise_multiplier / target_epsilon (--noise-multiplier / --epsilon) given "
                "but mode (--dp) is 'off': set it to 'central' or 'distributed'"
            )
        return self

    @property
    def enabled(self) -> bool:
        """Whether updates are clipped and noised."""
        return self.mode != "off"

    @property
    def noise_on_devices(self) -> bool:
        """Whether the devices add the noise (distributed mode), each a share."""
        return self.mode == "distributed"

    def mechanism(
        self,
        *,
        population: int,
        cohort: int,
        rounds: int,
        seed: int,
        purpose: Purpose = Purpose.TRAINING,
        released: int = 0,
    ) -> GaussianSum:
        """The Gaussian-sum mechanism of ``rounds`` releases of ``cohort`` devices out of
        ``population`` (``resolve``), its accountant charged with ``released`` releases
        already made (a resumed run)."""
        from stamen.privacy.dp.gaussian import MECHANISMS  # imports this module

        settings = self.resolve(population=population, cohort=cohort, rounds=rounds)
        return MECHANISMS[self.mode](
            noise_multiplier=settings.noise_multiplier,
            sensitivity=settings.clip_norm,
            accountant=PrivacyAccountant(settings, rounds=released),
            streams=Streams(seed),
            purpose=purpose,
        )

    def resolve(self, *, population: int, cohort: int, rounds: int) -> DPSettings:
        """Accounting settings for ``rounds`` rounds of ``cohort`` devices out of
        ``population``; without a noise multiplier, the smallest one that keeps
        ``rounds`` rounds within ``target_epsilon``."""
        if not self.enabled:
            raise ValueError("differential privacy is off")
        rate = min(cohort / population, 1.0)
        delta = self.delta if self.delta is not None else 1.0 / population
        z = self.noise_multiplier
        if z is None:
            assert self.target_epsilon is not None
            z = noise_for_target(
                target_epsilon=self.target_epsilon,
                delta=delta,
                sampling_rate=rate,
                rounds=rounds,
                accountant=self.accountant,
            )
        return DPSettings(
            noise_multiplier=z,
            clip_norm=self.clip_norm,
            sampling_rate=rate,
            delta=delta,
            target_epsilon=self.target_epsilon,
            accountant=self.accountant,
        )


def noise_share_std(*, noise_multiplier: float, clip_norm: float, cohort: int) -> float:
    """Standard deviation of one device's noise share in distributed mode: ``cohort``
    shares sum to noise of standard deviation ``noise_multiplier * clip_norm``."""
    return noise_multiplier * clip_norm / math.sqrt(max(cohort, 1))


def secagg_range_for(*, noise_multiplier: float, clip_norm: float, cohort: int) -> float:
    """Smallest SecAgg+ clipping range for distributed DP: a device's clipped update plus
    seven standard deviations of its noise share, so SecAgg+'s per-coordinate clipping
    (which would shrink the noise and void the guarantee) touches a coordinate with
    probability below 3e-12."""
    return clip_norm + 7 * noise_share_std(
        noise_multiplier=noise_multiplier, clip_norm=clip_norm, cohort=cohort
    )


def gaussian_noise(
    shapes: list[tuple[int, ...]], *, std: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Independent N(0, std²) arrays of the given shapes (float32)."""
    return [rng.normal(0.0, std, size=shape).astype(np.float32) for shape in shapes]
