"""Hyper-parameters of a device's local step, shared by the server (which sends them each
round) and the device (which validates them on receipt)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from stamen.dataclass_settings import DataclassSettings

if TYPE_CHECKING:
    from stamen.models.losses import LossFn


__all__ = ["DEVICE_ID_KEY", "SHARED_PARAMETERS", "LocalSettings"]

#: Names of the parameters that are global (trained federatedly), in upload order: the
#: item factors and item biases (``stamen.models.mf.factorization``'s item side).
SHARED_PARAMETERS: tuple[str, ...] = ("items.weight", "items.bias")

#: The ``get_properties`` key under which a device reports its stable device id (its
#: partition), by which the server samples cohorts.
DEVICE_ID_KEY = "device-id"


@dataclass(frozen=True)
class LocalSettings(DataclassSettings):
    """Hyper-parameters of the device step; the server sends them with each round. A
    dataclass checked without pydantic (``stamen.dataclass_settings``): a device serving
    an ``mf`` release builds it and loads no pydantic."""

    loss: str = "ials"
    dim: int = field(default=64, metadata={"gt": 0})
    init_std: float = field(default=0.1, metadata={"gt": 0})
    refresh_steps: int = field(
        default=5, metadata={"ge": 0, "description": "Adam steps re-fitting the user factor"}
    )
    refresh_lr: float = field(default=0.005, metadata={"gt": 0})
    local_epochs: int = field(default=1, metadata={"ge": 1})
    local_lr: float = field(default=0.05, metadata={"gt": 0})
    weight_decay: float = field(default=0.0, metadata={"ge": 0})
    update_weighting: Literal["uniform", "positives"] = field(
        default="uniform",
        metadata={"description": "scale each update by 1 or by the device's positives"},
    )
    alpha: float = field(
        default=1.0, metadata={"ge": 0, "description": "ials: extra confidence of a positive"}
    )
    l2: float = field(
        default=10.0, metadata={"ge": 0, "description": "ials: L2 weight on the user factor"}
    )
    item_l2: float | None = field(
        default=None,
        metadata={
            "ge": 0,
            "description": "ials: L2 weight on the item table per device; None: l2 / devices",
        },
    )

    def loss_fn(self) -> LossFn:
        """The configured loss with its hyper-parameters bound."""
        from stamen.models.losses import make_loss  # torch loads with the loss only

        return make_loss(self.loss, alpha=self.alpha, l2=self.l2, item_l2=self.item_l2 or 0.0)

    def for_population(self, devices: int) -> LocalSettings:
        """These settings with ``item_l2`` resolved for a population of ``devices`` (the
        per-device share of the item-table penalty ``l2``, as in the pooled objective)."""
        if self.item_l2 is not None:
            return self
        return self.model_copy(update={"item_l2": self.l2 / max(devices, 1)})

    def to_config(self) -> dict[str, bool | bytes | float | int | str]:
        """Flat form for a Flower ``FitIns.config`` (unset values left out)."""
        return {k: v for k, v in self.model_dump().items() if v is not None}
