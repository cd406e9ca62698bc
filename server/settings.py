"""Settings of a federated training run, as the server sees them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from stamen.models.fedrap.settings import FedRAPSettings
from stamen.models.mf.settings import LocalSettings
from stamen.models.pfedrec.settings import PFedRecSettings
from stamen.models.registry import model_class
from stamen.models.sequential.model import SequentialSettings
from stamen.models.two_tower.model import TwoTowerSettings
from stamen.privacy import MODULUS_RANGE, RecordDP, SecAggSettings, UserDP
from stamen.server.analytics import AnalyticsSettings
from stamen.server.experiment_monitoring import MAX_LOOKS
from stamen.server.optimizer import ServerOptimizerSettings

__all__ = ["ServerSettings"]


class ServerSettings(BaseModel):
    """Rounds, cohort, evaluation schedule, and the local / server / SecAgg+ / DP settings
    (``dp``: user-level DP-FedAvg; ``record_dp``: record-level DP-SGD on the devices)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Stamen's one set of defaults for rounds, cohort and evaluation: the simulation
    # (stamen.simulation.config), both Flower Apps and the deployment take them from here.
    rounds: int = Field(64, ge=1)
    clients_per_round: int = Field(64, ge=1)
    evaluate: bool = Field(
        True,
        description="federated evaluation rounds; off in a deployment, whose devices keep no "
        "held-out items",
    )
    eval_every: int = Field(32, ge=0, description="federated evaluation period; 0: last round only")
    eval_clients: int | None = Field(
        None, ge=1, description="devices per intermediate evaluation (the last round uses all)"
    )
    seed: int = 0
    connect_timeout: float = Field(
        300.0,
        gt=0,
        description="seconds a round waits for devices to connect before it samples a cohort",
    )
    model: str = Field("mf", description="model family (stamen.models.registry)")
    local: LocalSettings = LocalSettings()
    two_tower: TwoTowerSettings = TwoTowerSettings()
    sequential: SequentialSettings = SequentialSettings()
    pfedrec: PFedRecSettings = PFedRecSettings()
    fedrap: FedRAPSettings = FedRAPSettings()
    optimizer: ServerOptimizerSettings = ServerOptimizerSettings()
    secagg: SecAggSettings = SecAggSettings()
    dp: UserDP = UserDP()
    record_dp: RecordDP = RecordDP()
    analytics: AnalyticsSettings = AnalyticsSettings()

    @model_validator(mode="before")
    @classmethod
    def _model_defaults(cls, values: Any) -> Any:
        """What a run leaves unset that its model decides: its published ``optimizer``
        (``RecModel.server_optimizer``; the field's default otherwise), and the
        ``init_seed`` of a model whose devices start from one drawn state (FedRAP's), which
        is the run's ``seed``, so seeds vary it as they vary the shared arrays."""
        if not isinstance(values, dict):
            return values
        try:
            family = model_class(values.get("model", "mf"))
        except (TypeError, ValueError):  # not a known model: the field's validator says so
            return values
        values = dict(values)
        if values.get("optimizer") is None and family.server_optimizer is not None:
            values["optimizer"] = dict(family.server_optimizer)
        if "init_seed" in family.settings_class.model_fields:
            own = values.get(family.settings_field)
            given = own.model_fields_set if isinstance(own, BaseModel) else set(own or {})
            if "init_seed" not in given and "init-seed" not in given:
                base = own.model_dump() if isinstance(own, BaseModel) else dict(own or {})
                values[family.settings_field] = {**base, "init_seed": values.get("seed", 0)}
        return values

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        model_class(value)
        return value

    def model_settings(self) -> BaseModel:
        """The settings of the run's model family (``local`` for MF, ``two_tower``...)."""
        return getattr(self, model_class(self.model).settings_field)

    @property
    def secure_evaluation(self) -> bool:
        """Whether federated evaluation is a secure sum (``analytics.evaluation.secure``;
        unset: whenever SecAgg+ is on), so no device's metrics reach the server."""
        secure = self.analytics.evaluation.secure
        return self.secagg.enabled if secure is None else secure

    def device_config(self) -> dict[str, bool | bytes | float | int | str]:
        """What every training and evaluation request carries: the model's name and the
        settings of its device step."""
        return {"model": self.model, **self.model_settings().to_config()}  # type: ignore[attr-defined]

    @model_validator(mode="after")
    def _check(self) -> ServerSettings:
        if self.secagg.enabled and self.clients_per_round < self.secagg.num_shares:
            raise ValueError(
                f"SecAgg+ needs at least num_shares={self.secagg.num_shares} devices per round "
                f"(got clients_per_round={self.clients_per_round})"
            )
        self._check_ring()
        if (
            self.dp.enabled
            and self.secagg.enabled
            and self.secagg.clipping_range is not None
            and self.secagg.clipping_range < self.dp.clip_norm
        ):
            raise ValueError(
                f"secagg.clipping_range ({self.secagg.clipping_range}) is below the DP clip norm "
                f"({self.dp.clip_norm}): SecAgg+ would clip clipped updates again"
            )
        analytics = self.analytics
        if analytics.evaluation.secure and not self.secagg.enabled:
            raise ValueError("analytics.evaluation.secure needs secagg.enabled")
        if analytics.trending.every and not self.secagg.enabled:
            raise ValueError(
                "trending counts need secure aggregation (secagg.enabled): without it the "
                "server would see each device's recent items"
            )
        if analytics.experiments.every and not self.secagg.enabled:
            raise ValueError(
                "experiment measurements need secure aggregation (secagg.enabled): without "
                "it the server would see each device's arm and metrics"
            )
        experiments = analytics.experiments
        if experiments.monitor and not experiments.every:
            raise ValueError("experiment monitoring needs measurements (experiments.every)")
        if experiments.monitor and self.rounds // max(experiments.every, 1) > MAX_LOOKS:
            raise ValueError(
                f"experiment monitoring plans one look per measurement: {self.rounds} rounds "
                f"measured every {experiments.every} are more than {MAX_LOOKS} looks (measure "
                "less often)"
            )
        if analytics.evaluation.dp.enabled and not self.secure_evaluation:
            raise ValueError("evaluation DP noises the secure evaluation sum: it needs SecAgg+")
        if analytics.evaluation.dp.enabled and self.eval_clients is not None:
            raise ValueError(
                "evaluation DP asks every device on every evaluation round (sampling rate "
                "1, as its accountant assumes): unset eval_clients"
            )
        if self.record_dp.enabled and self.model != "mf":
            raise ValueError(
                f"record-level DP-SGD is implemented for model 'mf' only (got {self.model!r})"
            )
        if self.record_dp.enabled and self.local.update_weighting != "uniform":
            raise ValueError(
                "record-level DP needs local.update_weighting = 'uniform': scaling an update "
                "by the device's number of positives would make it depend on that count"
            )
        return self

    def _check_ring(self) -> None:
        """Refuse a SecAgg+ cohort whose honest sum cannot fit Flower's ring
        (``SecAggSettings.max_cohort``): it would wrap around, and every such round fail."""
        if not self.secagg.enabled:
            return
        limit = self.secagg.max_cohort()
        cohorts = {
            "clients_per_round": self.clients_per_round,
            "eval_clients": self.eval_clients,
            "analytics.trending.clients": self.analytics.trending.clients,
        }
        for name, cohort in cohorts.items():
            if cohort is not None and cohort > limit:
                raise ValueError(
                    f"{name} ({cohort}) is above the {limit} devices whose SecAgg+ sum fits "
                    "Flower's ring: each device adds up to secagg.quantization_range "
                    f"({self.secagg.quantization_range}) to every value and to the weight, "
                    f"and {limit + 1} of them reach its modulus ({MODULUS_RANGE}); lower "
                    f"{name} or secagg.quantization_range"
                )
