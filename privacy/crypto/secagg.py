"""Settings of Flower's SecAgg+ secure aggregation, validated before any round starts.

Flower crashes its clients on an even number of shares yet still "finishes" the round with
an all-zero model, so the checks here are not cosmetic.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["SecAggSettings"]


class SecAggSettings(BaseModel):
    """SecAgg+ parameters (on by default).

    ``num_shares`` (odd, at least 3) is how many neighbours hold a share of each device's
    key; ``reconstruction_threshold`` how many shares rebuild it (so at most
    ``num_shares - threshold`` neighbours of a device may drop out); values are clipped to
    ``[-clipping_range, clipping_range]`` and quantised into ``quantization_range`` levels
    before masking. ``timeout`` bounds each stage's wait for replies (``None``: no bound;
    a deployment sets one so that silent devices count as dropouts).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    num_shares: int = Field(5, ge=3)
    reconstruction_threshold: int = Field(3, ge=2)
    clipping_range: float = Field(1.0, gt=0)
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
        return self

    def quantization_step(self) -> float:
        """Width of one quantisation level: the per-coordinate rounding error bound."""
        return 2 * self.clipping_range / (self.quantization_range - 1)
