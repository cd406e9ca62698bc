"""Hyper-parameters of a device's local step, shared by the server (which sends them each
round) and the device (which validates them on receipt)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["LocalSettings"]


class LocalSettings(BaseModel):
    """Hyper-parameters of the device step; the server sends them with each round."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    loss: str = "softmax"
    dim: int = Field(64, gt=0)
    init_std: float = Field(0.1, gt=0)
    refresh_steps: int = Field(20, ge=0)
    refresh_lr: float = Field(0.1, gt=0)
    local_epochs: int = Field(1, ge=1)
    local_lr: float = Field(0.05, gt=0)
    weight_decay: float = Field(0.0, ge=0)

    def to_config(self) -> dict[str, bool | bytes | float | int | str]:
        """Flat form for a Flower ``FitIns.config``."""
        return self.model_dump()
