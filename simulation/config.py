"""The configuration of a ``stamen simulate`` run, parsed once at the edge.

Sources, later ones winning: the defaults here, a ``--config`` TOML file, command-line
flags (or a ``flwr run`` config, ``stamen.server.run_config``). Keys may be written kebab-case
or snake_case; nested sections are ``[data]`` (your own interactions file), ``[local]``,
``[two-tower]``, ``[sequential]``, ``[optimizer]``, ``[secagg]``, ``[dp]``, ``[record-dp]``,
``[centralised]``, ``[als]``, ``[ranker]`` and ``[analytics.trending]`` /
``[analytics.evaluation]``. Every problem is reported at once, each key named as the file
or the flag spelled it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from stamen.models import ConfigError
from stamen.models.bundle import ReleaseCatalog
from stamen.models.ranker.settings import RankerSettings
from stamen.models.registry import RecModel, build_model
from stamen.server.als import ALSSettings
from stamen.server.als_strategy import als_server_settings
from stamen.server.analytics import DEFAULT_CUTOFFS, evaluation_metrics
from stamen.server.optimizer import ServerOptimizerSettings
from stamen.server.run_config import Given, validate
from stamen.server.settings import ServerSettings
from stamen.simulation.datasets.interactions_file import DataFileSettings

if TYPE_CHECKING:
    from stamen.models.schema import Interactions
    from stamen.simulation.protocol.split import Split

__all__ = [
    "BATCHED_MODELS",
    "DEFAULT_DATASET",
    "Adjustment",
    "CentralisedSettings",
    "ProtocolSettings",
    "RankerTraining",
    "SimulationConfig",
    "load_config",
]

#: The named data set of a run that names neither one nor a file.
DEFAULT_DATASET = "ml-100k"

#: The model families the batched engine trains (``engine = "batched"``): MF only with its
#: closed-form ``ials`` step (its warm-started factor is not kept); PFedRec's score
#: functions and FedRAP's personal tables are kept by the engine, one per device.
BATCHED_MODELS = ("mf", "two-tower", "sequential", "pfedrec", "fedrap")


@dataclass(frozen=True)
class Adjustment:
    """A setting the run used with another value than the config's: ``setting`` as the
    TOML file names it, the value ``given`` (or the default), the value ``used``, and why."""

    setting: str
    given: Any
    used: Any
    reason: str

    def __str__(self) -> str:
        return f"{self.setting} {self.given} -> {self.used}: {self.reason}"


class CentralisedSettings(BaseModel):
    """The centralised baselines: MF with the same model, loss and training loop, trained on
    pooled data (its hyper-parameters tuned on validation separately from the federated
    ones); for two-tower and sequential runs also their own family's reference
    (``rounds``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dim: int | None = Field(None, gt=0, description="latent dimension; None: the devices' dim")
    epochs: int = Field(100, ge=1)
    lr: float = Field(0.01, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(256, ge=1)
    patience: int = Field(10, ge=1, description="epochs without validation gain before stopping")
    rounds: int | None = Field(
        None,
        ge=1,
        description="two-tower and sequential: rounds of their centralised reference, each "
        "one optimiser step on a batch of clients-per-round users "
        "(stamen.simulation.baselines.reference); None: the run's rounds",
    )


class ProtocolSettings(BaseModel):
    """How a run is evaluated (``stamen.simulation.protocol.split``): which of each
    user's items are held out (the last for test, as many before them for validation), in
    which order, and how many sampled negatives the secondary protocol ranks them among."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    split: Literal["leave-one-out", "ratio"] = Field(
        "leave-one-out",
        description="leave-one-out: one test and one validation item per user; ratio: "
        "ceil(test-ratio × n) of each user's n items for test and as many for validation, "
        "at most (n - 1) // 2 each",
    )
    test_ratio: float = Field(
        0.2,
        gt=0,
        lt=0.5,
        description="split 'ratio': the share of each user's items held out for test (and "
        "again for validation)",
    )
    holdout: Literal["temporal", "random"] = Field(
        "temporal",
        description="temporal: each user's latest items by time (a seeded random order "
        "where the data has no times); random: a seeded random order even where it has",
    )
    negatives: int = Field(99, ge=1, description="sampled negatives per evaluated user")
    cutoffs: tuple[int, ...] = Field(
        DEFAULT_CUTOFFS,
        description="the k of every @k metric, increasing, 10 among them (validation "
        "NDCG@10 selects the round)",
    )

    @field_validator("cutoffs")
    @classmethod
    def _check_cutoffs(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(k < 1 for k in value) or list(value) != sorted(set(value)):
            raise ValueError(f"cut-offs must be increasing positive integers, not {list(value)}")
        if 10 not in value:
            raise ValueError(
                f"cut-offs {list(value)} lack 10: validation NDCG@10 selects the reported "
                "round, so 10 is always one of them"
            )
        return value

    @model_validator(mode="after")
    def _check_ratio(self) -> ProtocolSettings:
        if "test_ratio" in self.model_fields_set and self.split != "ratio":
            raise ValueError(
                f"test-ratio {self.test_ratio} is given with split {self.split!r}, which holds "
                "out one item a stage: it applies to split 'ratio' (--split ratio)"
            )
        return self


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


class SimulationConfig(ServerSettings):
    """Everything a simulation run needs (see ``stamen simulate --help``): the server's
    settings (``ServerSettings``: rounds, cohort, evaluation, ``[local]``, ``[two-tower]``,
    ``[sequential]``, ``[optimizer]``, ``[secagg]``, ``[dp]``, ``[record-dp]``,
    ``[analytics]``) and the simulation's own (data set or ``[data]`` file, output, Ray,
    the baselines, private ALS, the ranker). ``dataset`` is ``DEFAULT_DATASET`` unless it
    or a ``[data]`` file is given (then ``None``); giving both is an error."""

    # at least 2 in a simulation (the server's settings allow 1)
    clients_per_round: int = Field(ServerSettings.model_fields["clients_per_round"].default, ge=2)
    dataset: str | None = Field(
        None, description=f"a named data set or synthetic (unset: {DEFAULT_DATASET})"
    )
    data_dir: Path | None = None
    data: DataFileSettings = DataFileSettings()
    algorithm: Literal["fedavg", "als"] = Field(
        "fedavg",
        description="fedavg: FedAvg/FedAdam rounds (DP-FedAvg under DP); als: private ALS "
        "(als.rounds + 1 rounds, every device in each; see [als])",
    )
    engine: Literal["flower", "batched"] = Field(
        "flower",
        description="flower: Flower's simulation engine, one virtual device per user (the "
        "default); batched: the same cohorts and arithmetic vectorised in this process "
        "(stamen.simulation.engines.batched), for research-size populations",
    )
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
    centralised: CentralisedSettings = CentralisedSettings()
    protocol: ProtocolSettings = ProtocolSettings()
    als: ALSSettings = ALSSettings()
    ranker: RankerTraining = RankerTraining()

    def split(self, interactions: Interactions) -> Split:
        """The run's evaluation split of ``interactions`` (``[protocol]``, ``seed``)."""
        from stamen.simulation.protocol.split import leave_one_out, ratio_split

        protocol = self.protocol
        if protocol.split == "ratio":
            return ratio_split(
                interactions,
                test_ratio=protocol.test_ratio,
                seed=self.seed,
                n_negatives=protocol.negatives,
                holdout=protocol.holdout,
            )
        return leave_one_out(
            interactions,
            seed=self.seed,
            n_negatives=protocol.negatives,
            holdout=protocol.holdout,
        )

    def run_model(self, catalog: ReleaseCatalog, devices: int) -> RecModel:
        """The run's model over ``catalog`` with its settings for ``devices`` devices."""
        settings = self.server_settings(devices)
        return build_model(settings.model, settings.model_settings(), catalog)

    @model_validator(mode="before")
    @classmethod
    def _default_dataset(cls, values: Any) -> Any:
        """``dataset`` is ``DEFAULT_DATASET`` when neither it nor a data file is given."""
        if not isinstance(values, dict) or values.get("dataset") is not None:
            return values
        data = values.get("data")
        path = data.get("path") if isinstance(data, dict) else getattr(data, "path", None)
        return values if path is not None else {**values, "dataset": DEFAULT_DATASET}

    @model_validator(mode="after")
    def _check_data(self) -> SimulationConfig:
        if self.data.path is not None and self.dataset is not None:
            raise ValueError(
                "give a data file (--data; path in [data]) or a named data set (--dataset; "
                f"dataset), not both (--data {self.data.path}, --dataset {self.dataset})"
            )
        unused = sorted(self.data.model_fields_set - {"path"})
        if self.data.path is None and unused:
            names = ", ".join(name.replace("_", "-") for name in unused)
            raise ValueError(f"{names} given without a data file (--data; path in [data])")
        return self

    @model_validator(mode="after")
    def _check_algorithm(self) -> SimulationConfig:
        if self.algorithm == "als" and self.resume:
            raise ValueError("private ALS runs are not resumed (their rounds are few)")
        if self.algorithm == "als" and self.model != "mf":
            raise ValueError("private ALS trains matrix factorisation (model 'mf') only")
        if self.algorithm == "als" and self.record_dp.enabled:
            raise ValueError("private ALS has no record-level DP-SGD step")
        return self

    @model_validator(mode="after")
    def _check_engine(self) -> SimulationConfig:
        if self.engine == "batched" and (problems := self.batched_problems()):
            raise ValueError(
                f"engine 'batched' does not run {'; '.join(problems)}. It runs algorithm "
                "'fedavg' with model 'mf' (local.loss 'ials', local.local-epochs 1), "
                "'two-tower', 'sequential', 'pfedrec' or 'fedrap', and algorithm 'als' "
                "(private ALS), user-level DP off, central or distributed, SecAgg+ on or off; "
                "use engine 'flower' for the rest"
            )
        return self

    def batched_problems(self) -> list[str]:
        """What this config asks that the batched engine does not do, each named by its
        setting (empty: it runs this config as Flower's simulation would)."""
        found = []
        # private ALS fixes its device step (als_server_settings): [local] is not used
        fedavg = self.algorithm == "fedavg"
        if self.model not in BATCHED_MODELS:
            found.append(f"model {self.model!r}")
        elif (
            fedavg
            and self.model == "mf"
            and (self.local.loss != "ials" or self.local.local_epochs != 1)
        ):
            found.append(
                f"model 'mf' with local.loss {self.local.loss!r} and local.local-epochs "
                f"{self.local.local_epochs} (a device keeps its user factor between rounds)"
            )
        if self.record_dp.enabled:
            found.append("record-level DP-SGD ([record-dp])")
        if self.ranker.rounds:
            found.append(f"ranker.rounds {self.ranker.rounds} (the pipeline's ranker)")
        if self.analytics.trending.every:
            found.append(f"analytics.trending.every {self.analytics.trending.every}")
        if self.analytics.evaluation.dp.enabled:
            found.append("analytics.evaluation.dp (a noised evaluation)")
        if self.eval_clients is not None:
            found.append(f"eval-clients {self.eval_clients} (it evaluates every device)")
        if self.resume:
            found.append("resume (it writes no checkpoints)")
        if self.ray_address is not None:
            found.append("ray-address (it runs in this process)")
        return found

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

    def adjustments(self, *, devices: int, evaluated: int) -> list[Adjustment]:
        """Every setting a run over ``devices`` devices (``evaluated`` of them holding
        held-out items) uses with another value than this config's: a cohort above the
        population (capped: every device in each round), evaluation devices above those
        that can evaluate, and what the algorithm fixes (private ALS: its rounds, cohort,
        device step and SecAgg+ range). A derived default (``item_l2`` from ``l2``) is no
        adjustment."""
        found: list[Adjustment] = []
        if self.algorithm == "fedavg" and self.clients_per_round > devices:
            how = "a Poisson rate of 1" if self.dp.enabled else "every device in every round"
            found.append(
                Adjustment(
                    "clients-per-round",
                    self.clients_per_round,
                    devices,
                    f"the data has {devices} users (one device each): {how}",
                )
            )
        if self.eval_clients is not None and self.eval_clients > evaluated:
            found.append(
                Adjustment(
                    "eval-clients",
                    self.eval_clients,
                    evaluated,
                    f"only {evaluated} devices hold held-out items",
                )
            )
        ranker_cohort = self.ranker.clients_per_round
        if self.ranker.rounds and ranker_cohort is not None and ranker_cohort > devices:
            found.append(
                Adjustment(
                    "ranker.clients-per-round",
                    ranker_cohort,
                    devices,
                    f"the data has {devices} users: every device in every ranker round",
                )
            )
        if self.algorithm == "als":
            given = self._server_settings(devices).model_dump()
            used = self.server_settings(devices).model_dump()
            for path, before, after in _changed(given, used):
                found.append(Adjustment(path, before, after, "private ALS fixes it (see [als])"))
        return found

    @property
    def evaluation_metrics(self) -> tuple[str, ...]:
        """What the federated evaluation reports: ``analytics.evaluation.metrics`` where the
        config names them, else every metric a device computes at the protocol's cut-offs
        (``stamen.server.analytics.evaluation_metrics``)."""
        query = self.analytics.evaluation
        if "metrics" in query.model_fields_set:
            return query.metrics
        return evaluation_metrics(self.protocol.cutoffs)

    @model_validator(mode="after")
    def _check_evaluation_metrics(self) -> SimulationConfig:
        computed = evaluation_metrics(self.protocol.cutoffs)
        if unknown := [name for name in self.evaluation_metrics if name not in computed]:
            raise ValueError(
                f"analytics.evaluation.metrics names {unknown}, which a device does not "
                f"compute at the protocol's cut-offs {list(self.protocol.cutoffs)}"
            )
        return self

    def _server_settings(self, devices: int) -> ServerSettings:
        fields = {name: getattr(self, name) for name in ServerSettings.model_fields}
        evaluation = self.analytics.evaluation.model_copy(
            update={"metrics": self.evaluation_metrics}
        )
        analytics = self.analytics.model_copy(update={"evaluation": evaluation})
        return ServerSettings.model_validate(
            {
                **fields,
                "local": self.local.for_population(devices),
                "analytics": analytics,
            }
        )


def _changed(
    given: dict[str, Any], used: dict[str, Any], prefix: str = ""
) -> list[tuple[str, Any, Any]]:
    """The leaves whose values differ, as ``(toml-path, given, used)``."""
    out = []
    for key, before in given.items():
        after = used.get(key)
        name = prefix + key.replace("_", "-")
        if isinstance(before, dict) and isinstance(after, dict):
            out += _changed(before, after, name + ".")
        elif before != after and before is not None:  # None: a default derived later
            out.append((name, before, after))
    return out


def load_config(
    path: Path | None = None,
    overrides: dict[str, Any] | Given | None = None,
    *,
    source: str = "command line",
) -> SimulationConfig:
    """Defaults, then the TOML file at ``path``, then ``overrides`` (a nested dict, its
    ``None`` values skipped, or a :class:`~stamen.server.run_config.Given`). One error
    lists every problem, each named as the file or ``source`` (where the overrides came
    from) spelled it."""
    sources = []
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: {err}") from None
        sources.append(Given.nested(data, source=str(path)))
    if isinstance(overrides, Given):
        sources.append(overrides)
    elif overrides:
        sources.append(Given.nested(overrides, source=source))
    return validate(SimulationConfig, *sources)
