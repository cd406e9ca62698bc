"""Record-level differential privacy: DP-SGD on the device (Abadi et al. 2016).

The unit of privacy is ONE interaction record of one device (one (device, item) pair):
what a device releases changes little whether or not any single one of its records is in
its data. That is a different, weaker unit than user-level DP-FedAvg
(``stamen.privacy.dp.user.UserDP``), which bounds what a *whole device* (all its records)
changes in the aggregate; the two are accounted and reported separately, and either can
run without the other.

Each round a device takes ``steps_per_round`` DP-SGD steps. Every step draws a Poisson
batch (each record independently with probability ``sample_rate``, q), clips each record's
gradient to ``max_grad_norm`` (C) and adds N(0, (z · C)²) noise to the sum; the update is
the step's result, so one round is ``steps_per_round`` steps of the sampled Gaussian
mechanism per record. q is fixed by configuration, never derived from how many records a
device holds, so ε depends only on (z, q, steps, δ) and the number of rounds the device
took part in; it reveals nothing about the device's interaction count. Opacus'
accountants compose the steps (``stamen.privacy.dp.accountant``); no privacy math lives here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stamen.privacy.dp.accountant import AccountantName, DPSettings, PrivacyAccountant

__all__ = ["CONFIG_PREFIX", "RecordDP", "record_epsilon"]

#: Prefix of the record-level DP keys in a device's fit / evaluate config.
CONFIG_PREFIX = "record-dp-"

_SENT = ("noise_multiplier", "max_grad_norm", "sample_rate", "steps_per_round")


class RecordDP(BaseModel):
    """Record-level DP-SGD settings of the devices' local step (see module docstring).

    ``noise_multiplier`` z (> 0), ``max_grad_norm`` C (the per-record clip), ``sample_rate``
    q (Poisson rate of records per step, fixed by configuration), ``steps_per_round``
    (default ``round(1 / q)``: one expected pass over a device's records per round),
    ``delta`` the δ that ε is reported at (default 1e-5, well below 1 / the number of
    records a device holds for any device with fewer than 100,000 interactions), and
    ``accountant`` a name in :data:`~stamen.privacy.dp.accountant.ACCOUNTANTS`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    noise_multiplier: float = Field(1.0, gt=0, allow_inf_nan=False)
    max_grad_norm: float = Field(1.0, gt=0, allow_inf_nan=False)
    sample_rate: float = Field(0.05, gt=0, le=1)
    steps_per_round: int = Field(20, ge=1)
    delta: float = Field(1e-5, gt=0, lt=1)
    accountant: AccountantName = "rdp"

    @model_validator(mode="before")
    @classmethod
    def _default_steps(cls, data: Any) -> Any:
        """``steps_per_round`` defaults to ``round(1 / sample_rate)`` (one expected epoch)."""
        if isinstance(data, Mapping) and data.get("steps_per_round") is None:
            rate = data.get("sample_rate", cls.model_fields["sample_rate"].default)
            if isinstance(rate, int | float) and 0 < rate <= 1:
                data = {**data, "steps_per_round": max(1, round(1 / rate))}
        return data

    def to_config(self) -> dict[str, float | int]:
        """What a device needs, as flat ``record-dp-*`` keys of a Flower config."""
        return {CONFIG_PREFIX + name.replace("_", "-"): getattr(self, name) for name in _SENT}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RecordDP | None:
        """The settings sent with :meth:`to_config`, or ``None`` when the config holds none
        (record-level DP off). Validated like any other settings."""
        keys = {CONFIG_PREFIX + name.replace("_", "-"): name for name in _SENT}
        found = {name: config[key] for key, name in keys.items() if key in config}
        if not found:
            return None
        return cls(enabled=True, **found)

    def report(self, participations: int) -> dict[str, Any]:
        """ε of a device that took part in ``participations`` rounds, with the settings
        it is computed from (``unit: "record"``)."""
        return {
            "epsilon": record_epsilon(self, participations),
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.max_grad_norm,
            "sample_rate": self.sample_rate,
            "steps_per_round": self.steps_per_round,
            "max_participations": int(participations),
            "accountant": self.accountant,
            "unit": "record",
        }


def record_epsilon(settings: RecordDP, participations: int) -> float:
    """ε at ``settings.delta`` of one record of a device that took part in
    ``participations`` rounds: ``steps_per_round × participations`` steps of the sampled
    Gaussian mechanism (z, q), composed by Opacus' accountant. 0 without participation.
    """
    if participations < 0:
        raise ValueError(f"participations must be non-negative (got {participations})")
    if participations == 0:
        return 0.0
    mechanism = DPSettings(
        noise_multiplier=settings.noise_multiplier,
        clip_norm=settings.max_grad_norm,
        sampling_rate=settings.sample_rate,
        delta=settings.delta,
        accountant=settings.accountant,
    )
    return PrivacyAccountant(mechanism).epsilon_after(settings.steps_per_round * participations)
