"""The ranker's shape and its device step, as the server sends them with each round.

A pydantic model: the device reads it only when it trains the ranker (``stamen.client``'s
Flower tasks), never to serve a release (``stamen.models.ranker.weights``).
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["RankerSettings"]


class RankerSettings(BaseModel):
    """The ranker's shape and its device step."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hidden: int = Field(16, ge=0, description="hidden units (0: logistic regression)")
    # chosen on MovieLens-100K: the training loss of the devices' replayed lists fell from
    # 5.05 to 4.83 in 300 rounds of 64 (FedAvg, server lr 1); at local lr 0.1 it rose
    local_lr: float = Field(0.02, gt=0, description="learning rate of the device's steps")
    local_steps: int = Field(5, ge=1, description="full-batch gradient steps per round")
    weight_decay: float = Field(1e-4, ge=0, description="L2 penalty in the device's loss")

    def to_config(self) -> dict[str, int | float]:
        """Flat form for a Flower ``FitIns.config`` (``ranker-`` keys)."""
        return {f"ranker-{k.replace('_', '-')}": v for k, v in self.model_dump().items()}

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> RankerSettings:
        """The settings a request's ``config`` carries (:meth:`to_config`'s keys; missing:
        an error, a device does not guess its step)."""
        try:
            values = {k: config[f"ranker-{k.replace('_', '-')}"] for k in cls.model_fields}
        except KeyError as missing:
            raise ValueError(f"a ranker request lacks {missing}") from None
        return cls.model_validate(values)
