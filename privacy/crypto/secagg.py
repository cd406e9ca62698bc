"""Settings of Flower's SecAgg+ secure aggregation, validated before any round starts, and
the bounds an unmasked sum keeps.

Flower crashes its clients on an even number of shares yet still "finishes" the round with
an all-zero model, so the checks here are not cosmetic.

What SecAgg+ bounds, read from flwr 1.42's ``secaggplus_mod`` and ``SecAggPlusWorkflow``:
an honest device clips each value to ``[-clipping_range, clipping_range]``, quantises it
stochastically to an integer in ``[0, quantization_range]``, prepends its weight and adds
masks modulo ``MODULUS_RANGE`` (2^32). The server adds the masked vectors, removes the
masks, divides by the summed weight and shifts by ``-(n - 1) × clipping_range``. Stamen's
devices all send weight 1 under ``MAX_WEIGHT`` 1, which SecAgg+ encodes as exactly
``quantization_range``: the unmasked weight slot of ``n`` honest devices is ``n ×
quantization_range`` (:meth:`SecAggSettings.honest_weight_sum`), and ``n`` must be small
enough for that sum, the largest an honest slot can reach, to stay inside the ring
(:meth:`SecAggSettings.max_cohort`). Nothing
checks what a device masked: a modified device may send *any* element of the ring, weight
included, so on its own SecAgg+ bounds a malicious device's contribution by nothing but
the wrap-around (up to ``2 × clipping_range × MODULUS_RANGE / quantization_range``, 2,048
ranges, per value, and a weight that rescales the whole mean). What bounds it is the
server's check of the unmasked sum against :func:`honest_sum_bound`; how far a device can
then still move an accepted sum is :func:`malicious_influence_bound`.
"""

from __future__ import annotations

import logging
import math

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stamen.errors import ConfigError

__all__ = [
    "MAX_WEIGHT",
    "MODULUS_RANGE",
    "NOISE_TAIL",
    "UNCLIPPED_RANGE",
    "WIDE_RANGE_FACTOR",
    "SecAggSettings",
    "honest_sum_bound",
    "malicious_influence_bound",
]

_log = logging.getLogger("stamen")

#: Flower's ``modulus_range`` (its default, which Stamen keeps): masks and sums live modulo it.
MODULUS_RANGE = 2**32
#: The ``max_weight`` Stamen's SecAgg+ workflow runs with: every device reports weight 1,
#: which SecAgg+ quantises to ``round(1 / MAX_WEIGHT × quantization_range)``.
MAX_WEIGHT = 1.0
#: The per-coordinate range without user-level DP: devices do not clip then, so no clip
#: norm bounds a value, and SecAgg+ clips each to ±1.
UNCLIPPED_RANGE = 1.0
#: An explicit range more than this many times what the devices' values need is warned
#: about (it loosens the server's per-coordinate check and coarsens the quantisation).
WIDE_RANGE_FACTOR = 2.0
#: The Gaussian tail ``t`` of the noise bounds: the norm of a sum of noise shares exceeds
#: ``std × (sqrt(size) + t)`` with probability below ``exp(-t² / 2)`` (2.3e-11).
NOISE_TAIL = 7.0


class SecAggSettings(BaseModel):
    """SecAgg+ parameters (on by default).

    ``num_shares`` (odd, at least 3) is how many neighbours hold a share of each device's
    key; ``reconstruction_threshold`` how many shares rebuild it (so at most
    ``num_shares - threshold`` neighbours of a device may drop out); values are clipped to
    ``[-clipping_range, clipping_range]`` and quantised into ``quantization_range`` levels
    before masking. ``clipping_range`` unset (the default) is derived from the run's DP
    clip norm when a round plan resolves it (:meth:`resolved`;
    ``stamen.server.rounds.secagg_range``). ``timeout`` bounds each stage's wait for
    replies (``None``: no bound; a deployment sets one so that silent devices count as
    dropouts).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    num_shares: int = Field(5, ge=3)
    reconstruction_threshold: int = Field(3, ge=2)
    clipping_range: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="per-coordinate range; None: derived from the DP clip norm (the clip "
        "norm, plus room for distributed noise shares; 1.0 without DP)",
    )
    quantization_range: int = Field(2**22, gt=1)
    timeout: float | None = Field(
        None,
        gt=0,
        description="seconds to wait for each SecAgg+ stage; None waits for every device "
        "(right for simulation, where a device cannot vanish; set it for deployments)",
    )

    @model_validator(mode="after")
    def _check(self) -> SecAggSettings:
        if self.num_shares % 2 == 0:
            raise ValueError(f"num_shares must be odd (got {self.num_shares})")
        if self.reconstruction_threshold >= self.num_shares:
            raise ValueError(
                f"reconstruction_threshold ({self.reconstruction_threshold}) must be below "
                f"num_shares ({self.num_shares}), as Flower's SecAggPlusWorkflow requires"
            )
        if self.quantization_range >= MODULUS_RANGE:
            raise ValueError(
                f"quantization_range ({self.quantization_range}) must be below Flower's "
                f"modulus ({MODULUS_RANGE})"
            )
        return self

    def resolved(self, needed: float, *, why: str = "the devices' values") -> SecAggSettings:
        """These settings with the clipping range a run uses: ``needed`` (what honest
        values need, ``why`` says what they are) when unset; the explicit range otherwise,
        refused (``ConfigError``) below ``needed`` and warned about (it is kept) when
        wider than ``WIDE_RANGE_FACTOR × needed``."""
        if not (math.isfinite(needed) and needed > 0):
            raise ValueError(f"needed must be a positive finite range (got {needed!r})")
        explicit = self.clipping_range
        if explicit is None:
            return self.model_copy(update={"clipping_range": needed})
        if explicit < needed * (1 - 1e-12):
            raise ConfigError(
                f"secagg.clipping_range ({explicit:g}) is below the {needed:.4g} {why} "
                "need: SecAgg+ would clip them; raise it or leave it unset (derived)"
            )
        if explicit > WIDE_RANGE_FACTOR * needed:
            _log.warning(
                "secagg.clipping_range (%g) is %.3gx the %.4g %s need: kept as set; the "
                "server's per-coordinate check of the sum is that much looser (leave it "
                "unset to derive it)",
                explicit,
                explicit / needed,
                needed,
                why,
            )
        return self

    def value_range(self) -> float:
        """The clipping range, which must be set (or resolved, :meth:`resolved`)."""
        if self.clipping_range is None:
            raise ValueError(
                "secagg.clipping_range is derived from the DP clip norm: resolve the settings "
                "first (SecAggSettings.resolved, RoundPlan.secagg)"
            )
        return self.clipping_range

    def max_cohort(self) -> int:
        """The most devices whose honest sum fits Flower's ring: each honest device's
        weight slot is ``quantization_range`` and each of its values at most that, so ``n``
        devices sum to at most ``n × quantization_range``, which must stay below
        ``MODULUS_RANGE`` (beyond it the sum wraps around and reads as another one)."""
        return (MODULUS_RANGE - 1) // self.quantization_range

    @staticmethod
    def quantization_for(cohort: int) -> int:
        """The finest power-of-two ``quantization_range``, at most the default, under which
        the honest sum of ``cohort`` devices fits Flower's ring (:meth:`max_cohort`): for
        cohorts above 1,023 the default's limit."""
        default = SecAggSettings.model_fields["quantization_range"].default
        levels = 2 ** ((MODULUS_RANGE - 1) // max(cohort, 1)).bit_length()
        while levels * cohort >= MODULUS_RANGE:
            levels //= 2
        return min(default, levels)

    def honest_weight_sum(self, devices: int) -> int:
        """The unmasked weight slot of ``devices`` honest devices: each sends weight 1
        under ``MAX_WEIGHT``, quantised to ``round(1 / MAX_WEIGHT × quantization_range)``
        (flwr 1.42's ``secaggplus_mod``)."""
        return devices * round(1.0 / MAX_WEIGHT * self.quantization_range)

    def quantization_step(self) -> float:
        """Width of one quantisation level: the per-coordinate rounding error bound."""
        return 2 * self.value_range() / (self.quantization_range - 1)


def honest_sum_bound(
    *,
    devices: int,
    size: int,
    clip_norm: float,
    noise_std: float,
    secagg: SecAggSettings,
    tail: float = NOISE_TAIL,
) -> float:
    """The largest L2 norm the unmasked sum of ``devices`` honest updates of ``size``
    values can have: each clipped to ``clip_norm`` (``n C``), each value off by less than
    one quantisation level (``n × step × sqrt(size)``), plus their noise shares of standard
    deviation ``noise_std`` each (a sum of standard deviation ``noise_std × sqrt(n)``,
    whose norm exceeds ``sqrt(n) × noise_std × (sqrt(size) + tail)`` with probability below
    ``exp(-tail² / 2)``, Gaussian concentration of a 1-Lipschitz function). Holds while no
    noise share reaches the clipping range, which its derivation makes rarer still."""
    if devices < 0 or size < 0:
        raise ValueError(f"devices and size must be non-negative (got {devices}, {size})")
    root = math.sqrt(size)
    noise = noise_std * math.sqrt(devices) * (root + tail) if noise_std > 0 else 0.0
    return devices * clip_norm + devices * secagg.quantization_step() * root + noise


def malicious_influence_bound(
    *,
    devices: int,
    size: int,
    clip_norm: float,
    noise_std: float,
    secagg: SecAggSettings,
    tail: float = NOISE_TAIL,
) -> float:
    """How far one malicious device among ``devices`` can move a sum that the server
    accepts (norm at most ``honest_sum_bound(devices)``) from the sum of the other
    ``devices - 1`` honest updates (norm at most ``honest_sum_bound(devices - 1)``): by the
    triangle inequality, their total. Whatever ring elements it sent, wrap-around and
    weight included."""
    return sum(
        honest_sum_bound(
            devices=m,
            size=size,
            clip_norm=clip_norm,
            noise_std=noise_std,
            secagg=secagg,
            tail=tail,
        )
        for m in (devices, max(devices - 1, 0))
    )
