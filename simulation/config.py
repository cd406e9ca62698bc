"""The configuration of a ``stamen simulate`` run, parsed once at the edge.

Sources, later ones winning: the defaults here, a ``--config`` TOML file, command-line
flags. Keys may be written kebab-case or snake_case; nested sections are ``[local]``,
``[two-tower]``, ``[optimizer]``, ``[secagg]``, ``[dp]``, ``[record-dp]``, ``[centralised]``,
``[als]``, ``[ranker]`` and ``[analytics.trending]`` / ``[analytics.evaluation]``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stamen.models import ConfigError
from stamen.models.bundle import ReleaseCatalog
from stamen.models.mf.settings import LocalSettings
from stamen.models.ranker.model import RankerSettings
from stamen.models.registry import RecModel, build_model, model_class
from stamen.models.two_tower.model import TwoTowerSettings
from stamen.privacy import RecordDP, SecAggSettings, UserDP
from stamen.server.als import ALSSettings
from stamen.server.als_strategy import als_server_settings
from stamen.server.analytics import AnalyticsSettings
from stamen.server.optimizer import ServerOptimizerSettings
from stamen.server.settings import ServerSettings

__all__ = ["CentralisedSettings", "RankerTraining", "SimulationConfig", "load_config"]

_SERVER = ServerSettings.model_fields


class CentralisedSettings(BaseModel):
    """The centralised MF baseline: same model, loss and training loop, trained on pooled
    data; its hyper-parameters are tuned on validation separately from the federated ones."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dim: int | None = Field(None, gt=0, description="latent dimension; None: the devices' dim")
    epochs: int = Field(100, ge=1)
    lr: float = Field(0.01, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(256, ge=1)
    patience: int = Field(10, ge=1, description="epochs without validation gain before stopping")


class RankerTraining(RankerSettings):
    """The pipeline's ranker, trained in Flower rounds after the retrieval model
    (``stamen.server.ranker_strategy``): every device first installs the run's last
    release, then learns from the list it would have offered before its latest event.
    Its shape and device step are ``RankerSettings``' fields; the cohort, SecAgg+ and
    user-level DP are the run's (its ε is accounted and reported apart from training's)."""

    rounds: int = Field(0, ge=0, description="ranker rounds after training; 0: none")
    clients_per_round: int | None = Field(
        None, ge=2, description="devices per ranker round (None: the run's cohort)"
    )
    server_lr: float = Field(1.0, gt=0, description="FedAvg's server learning rate")

    def device_settings(self) -> RankerSettings:
        """The ranker's shape and device step alone."""
        return RankerSettings(**self.model_dump(include=set(RankerSettings.model_fields)))


class SimulationConfig(BaseModel):
    """Everything a simulation run needs; see ``stamen simulate --help``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str = "ml-100k"
    data_dir: Path | None = None
    model: str = Field("mf", description="model family: mf or two-tower (see [two-tower])")
    algorithm: Literal["fedavg", "als"] = Field(
        "fedavg",
        description="fedavg: FedAvg/FedAdam rounds (DP-FedAvg under DP); als: private ALS "
        "(als.rounds + 1 rounds, every device in each; see [als])",
    )
    # rounds, cohort and evaluation: the server's defaults (one set, ServerSettings)
    rounds: int = Field(_SERVER["rounds"].default, ge=1)
    clients_per_round: int = Field(_SERVER["clients_per_round"].default, ge=2)
    eval_every: int = Field(_SERVER["eval_every"].default, ge=0)
    eval_clients: int | None = Field(_SERVER["eval_clients"].default, ge=1)
    seed: int = 0
    output: Path = Path("results/run")
    resume: bool = False
    cpus_per_client: float = Field(1.0, gt=0)
    ray_address: str | None = Field(
        None,
        description="HOST:PORT of a running Ray cluster for the simulated devices (None: a "
        "local Ray instance); device stores live under output, which every node must see",
    )
    synthetic_users: int = Field(1000, ge=10)
    synthetic_items: int = Field(500, ge=100)
    local: LocalSettings = LocalSettings()
    two_tower: TwoTowerSettings = TwoTowerSettings()
    optimizer: ServerOptimizerSettings = ServerOptimizerSettings()
    secagg: SecAggSettings = SecAggSettings()
    dp: UserDP = UserDP()
    record_dp: RecordDP = RecordDP()
    centralised: CentralisedSettings = CentralisedSettings()
    als: ALSSettings = ALSSettings()
    analytics: AnalyticsSettings = AnalyticsSettings()
    ranker: RankerTraining = RankerTraining()

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        model_class(value)
        return value

    def run_model(self, catalog: ReleaseCatalog, devices: int) -> RecModel:
        """The run's model over ``catalog`` with its settings for ``devices`` devices."""
        settings = self.server_settings(devices)
        return build_model(settings.model, settings.model_settings(), catalog)

    @model_validator(mode="after")
    def _check_algorithm(self) -> SimulationConfig:
        if self.algorithm == "als" and self.resume:
            raise ValueError("private ALS runs are not resumed (their rounds are few)")
        if self.algorithm == "als" and self.model != "mf":
            raise ValueError("private ALS trains matrix factorisation (model 'mf') only")
        if self.algorithm == "als" and self.record_dp.enabled:
            raise ValueError("private ALS has no record-level DP-SGD step")
        return self

    def server_settings(self, devices: int) -> ServerSettings:
        """The server's view of this run over ``devices`` devices."""
        base = self._server_settings(devices)
        if self.algorithm == "als":
            return als_server_settings(base, self.als, devices=devices)
        return base

    def ranker_server_settings(self, devices: int) -> ServerSettings:
        """The server's view of the ranker's rounds: ``ranker.rounds`` rounds of
        ``ranker.clients_per_round`` (default: the run's cohort), FedAvg at
        ``ranker.server_lr``, the run's SecAgg+ and DP, its evaluation on the last round
        only, no trending queries (the release keeps the training run's counts)."""
        base = self._server_settings(devices)
        return base.model_copy(
            update={
                "rounds": max(self.ranker.rounds, 1),
                "clients_per_round": self.ranker.clients_per_round or self.clients_per_round,
                "eval_every": 0,
                "eval_clients": None,
                "optimizer": ServerOptimizerSettings(name="fedavg", lr=self.ranker.server_lr),
            }
        )

    def _server_settings(self, devices: int) -> ServerSettings:
        return ServerSettings(
            rounds=self.rounds,
            clients_per_round=self.clients_per_round,
            eval_every=self.eval_every,
            eval_clients=self.eval_clients,
            seed=self.seed,
            model=self.model,
            local=self.local.for_population(devices),
            two_tower=self.two_tower,
            optimizer=self.optimizer,
            secagg=self.secagg,
            dp=self.dp,
            record_dp=self.record_dp,
            analytics=self.analytics,
        )


def _snake(value: Any) -> Any:
    if isinstance(value, dict):
        return {k.replace("-", "_"): _snake(v) for k, v in value.items()}
    return value


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    path: Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    source: str = "command line",
) -> SimulationConfig:
    """Defaults, then the TOML file at ``path``, then ``overrides`` (``None`` values skipped).
    Errors name ``path``, or ``source`` (where the overrides came from) without one."""
    data: dict[str, Any] = {}
    if path is not None:
        source = str(path)
        try:
            data = _snake(tomllib.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: {err}") from None
    cleaned = {k: v for k, v in _snake(overrides or {}).items() if v is not None}
    try:
        return SimulationConfig.model_validate(_merge(data, cleaned))
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        raise ConfigError(f"{source}: {problems}") from None
