"""What the deployment ServerApp (``stamen.server.app:server_app``) runs.

It reads server settings only, from the run config (``flwr run . <federation>
--run-config "k=v ..."``, flat kebab-case keys derived from :class:`DeploymentRun`, see
:data:`RUN_CONFIG_KEYS`); it loads no data set and writes no device store. The catalogue
and the model come from the newest signed release in the ``releases`` folder (release 0 is
the operator's starting point, ``stamen release init``); every round publishes the next
signed release there and a checkpoint (global model, server optimiser, privacy accountant,
round, history) under ``checkpoints``; ``resume=true`` continues a killed run from its last
checkpoint with ε continuing. One JSON line per round goes to ``<checkpoints>/rounds.jsonl``.

``train`` picks what the run trains: ``model`` (the default) the retrieval model, whose
releases carry the starting release's ranker and trending counts unchanged until the run
replaces them; ``ranker`` the pipeline's ranker (``stamen.server.ranker_strategy``,
settings ``ranker-hidden``, ``ranker-local-lr``, ``ranker-local-steps``,
``ranker-weight-decay``), starting from the release's ranker (or the retrieval order),
each device learning from the example it replays against the release it has installed;
its releases carry the retrieval model unchanged, and, with ``population`` given and
SecAgg+ on, its last round asks the devices for the ranker's metrics on their own lists
as a secure sum.

``devices`` names the operator's device registry (``stamen certs make`` writes
``devices.toml``): each node's device id is then the one its authenticated SuperNode key is
registered under (``stamen.server.identities``), whatever the device declares. Without it
the devices' ids are self-declared (their ``--node-config`` ``device-id``): the run says so
once, in its log and in ``status.json``'s ``warnings``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Literal

from flwr.app import Context
from flwr.server import Grid
from pydantic import Field

from stamen.errors import CheckpointError, ConfigError, RoundFailedError
from stamen.models.bundle import ReleaseBundle, latest_release
from stamen.models.experiments import EXPERIMENTS_EXTRA, experiment_arms, experiment_metrics
from stamen.models.off_policy import CANDIDATES_EXTRA, candidate_policies
from stamen.models.ranker.settings import RankerSettings
from stamen.models.ranker.weights import ranker_hidden
from stamen.models.registry import RecModel, build_model
from stamen.privacy import open_signed, write_atomically
from stamen.runtimes import without_runtime
from stamen.server.checkpoint import CheckpointStore, RoundsLog
from stamen.server.identities import DeviceRegistry, KeyIdentities
from stamen.server.metrics import RunMetrics, parse_address
from stamen.server.ranker_strategy import RankerAveraging
from stamen.server.releases import ReleaseWriter, load_or_create_signing_key
from stamen.server.rounds import RoundRecord
from stamen.server.run_config import read_run_config, run_config_keys, validate
from stamen.server.settings import ServerSettings
from stamen.server.strategy import FederatedAveraging

__all__ = [
    "REPLY_TIMEOUT_S",
    "RUN_CONFIG_KEYS",
    "SECAGG_TIMEOUT_S",
    "SELF_DECLARED",
    "Deployment",
    "DeploymentRun",
    "RunStatus",
    "carried_extras",
    "deployment_strategy",
    "serve",
]

_log = logging.getLogger("stamen")

#: Seconds each SecAgg+ stage waits for replies in a deployment unless the run config says
#: otherwise (``secagg-timeout``): a device that does not answer in time has dropped out.
SECAGG_TIMEOUT_S = 120.0
#: Seconds each plain-mode stage (training, a query in the clear) waits for replies unless
#: the run config says otherwise (``reply-timeout``); the same as a SecAgg+ stage's, which a
#: living device answers within on a loaded machine. Flower's plain workflows give no
#: timeout of their own (``stamen.server.grid``): without one a lost reply stalls the run.
REPLY_TIMEOUT_S = SECAGG_TIMEOUT_S

#: What a run without a device registry warns, once.
SELF_DECLARED = (
    "devices' identities are self-declared (no 'devices' registry in the run config): any "
    "registered node can claim any device-id"
)


class DeploymentRun(ServerSettings):
    """A deployment run's settings: the server's and the deployment's own (folders, key,
    population, resume, what it trains, the ranker's shape and device step)."""

    releases: Path = Field(description="the signed releases: the newest is the start")
    checkpoints: Path = Field(description="checkpoints and rounds.jsonl")
    signing_key: Path = Field(description="the publisher's Ed25519 key")
    population: int | None = Field(
        None, ge=1, description="enrolled devices (device-id 0 … population-1)"
    )
    resume: bool = Field(False, description="continue from the last checkpoint")
    train: Literal["model", "ranker"] = Field(
        "model", description="the retrieval model or the pipeline's ranker"
    )
    ranker: RankerSettings = RankerSettings()
    metrics_address: str | None = Field(
        None, description="host:port of the run's Prometheus endpoint (none: not served)"
    )
    devices: Path | None = Field(
        None,
        description="the device registry, device ids by SuperNode key (none: self-declared)",
    )
    reply_timeout: float = Field(
        REPLY_TIMEOUT_S,
        gt=0,
        description="seconds a plain-mode stage waits for the devices' replies; a device "
        "that has not answered by then has dropped out of the round",
    )


#: ``ServerSettings`` fields a deployment's run config does not set: the starting release
#: fixes the model and its settings, the run decides its evaluation.
_FIXED = (
    "model",
    "local",
    "two_tower",
    "sequential",
    "pfedrec",
    "fedrap",
    "evaluate",
    "eval_every",
    "eval_clients",
    "analytics.evaluation",
)

#: Run-config key -> field path of :class:`DeploymentRun`.
RUN_CONFIG_KEYS = run_config_keys(DeploymentRun, exclude=_FIXED)

_DEFAULTS = {"secagg": {"timeout": SECAGG_TIMEOUT_S}}  # a real device can vanish


class Deployment:
    """A deployment run's validated settings (see module docstring); one error names every
    unknown key and bad value."""

    def __init__(self, run_config: dict[str, Any]) -> None:
        given = read_run_config(without_runtime(run_config), RUN_CONFIG_KEYS, source="run config")
        train = given.data.get("train", "model")
        ranker = given.given_under("ranker")
        problems = []
        if ranker and train != "ranker":
            problems.append(f"run config: {', '.join(ranker)} set, but train is {train!r}")
        run = validate(DeploymentRun, given, defaults=_DEFAULTS, problems=problems)
        self.releases, self.checkpoints = run.releases, run.checkpoints
        self.signing_key, self.population = run.signing_key, run.population
        self.resume, self.train, self.ranker = run.resume, run.train, run.ranker
        self.metrics_address = run.metrics_address
        self.reply_timeout = run.reply_timeout
        if self.metrics_address is not None:
            parse_address(self.metrics_address)  # a bad address fails the run before round 1
        #: The device registry (``None``: devices' ids are self-declared).
        self.devices = None if run.devices is None else DeviceRegistry.read(run.devices)
        if self.devices is not None and self.population is not None:
            outside = [i for i in self.devices.ids if i >= self.population]
            if outside:
                raise ConfigError(
                    f"{run.devices}: device ids {outside} are outside [0, {self.population}) "
                    "(the run config's population)"
                )
        self._given = given.only(ServerSettings.model_fields)
        # deployed devices keep no held-out items: no evaluation rounds to wait for, but
        # a ranker run's last round, which asks every enrolled device about its own
        # offered list as a secure sum (with 'population' known: it sizes the query;
        # never in the clear: deployed devices send no metrics in plain mode)
        self._evaluation = {
            "evaluate": self.train == "ranker" and self.population is not None,
            **({"eval_every": 0} if self.train == "ranker" else {}),
        }

    def server_settings(self, model: RecModel) -> ServerSettings:
        """The run config's server settings for the starting release's ``model``."""
        fixed = {"model": model.name, model.settings_field: model.settings.model_dump()}
        defaults = {**_DEFAULTS, **fixed, **self._evaluation}
        return validate(ServerSettings, self._given, defaults=defaults)

    def starting_release(self, public_key: bytes) -> ReleaseBundle:
        """The newest signed release in ``releases`` (its signature checked)."""
        path = latest_release(self.releases)
        if path is None:
            raise ConfigError(f"{self.releases}: no release to start from (stamen release init)")
        data = path.read_bytes()
        payload = open_signed(data, public_key=public_key, source=str(path))
        return ReleaseBundle.decode(payload, source=str(path))


def deployment_strategy(
    deployment: Deployment, metrics: RunMetrics | None = None
) -> FederatedAveraging:
    """The run's strategy: settings from the run config, model and catalogue from the
    newest signed release, resumed from the last checkpoint when asked; ``metrics`` sees
    every round as it closes."""
    if not deployment.signing_key.is_file():
        raise ConfigError(f"{deployment.signing_key}: no release signing key")
    private, public = load_or_create_signing_key(deployment.signing_key)
    release = deployment.starting_release(public)
    model = build_model(release.model, dict(release.settings), release.catalog)
    settings = deployment.server_settings(model)
    if not settings.secagg.enabled:
        settings = settings.model_copy(update={"evaluate": False})
    if settings.analytics.trending.every and deployment.population is None:
        raise ConfigError(
            "run config: trending needs 'population' (the number of enrolled devices), "
            "which sets its cohort and its default delta"
        )
    if settings.dp.enabled and deployment.population is None:
        raise ConfigError(
            "run config: user-level DP needs 'population' (the number of enrolled devices, "
            "device-id 0 … population-1), which sets the sampling rate the accountant uses"
        )
    checkpoints = CheckpointStore(deployment.checkpoints)
    resume = checkpoints.latest() if deployment.resume else None
    if not deployment.resume:
        checkpoints.clear()
    log = RoundsLog(deployment.checkpoints)
    moved = log.start(resume=deployment.resume)
    if moved is not None:
        _log.info("the previous run's rounds.jsonl moved to %s", moved)

    def on_round(record: RoundRecord) -> None:
        line = json.dumps({"time": time.time(), **record.to_json()}, default=str)
        log.append(line)
        _log.info(line)
        if metrics is not None:
            metrics.observe(record)
        if record.failed is not None:  # recorded, published nothing: the run stops here
            raise RoundFailedError(record.failed)

    # the releases folder owns the numbering: release N of the run follows the newest one
    # (after a resume: the newest before the run's first round)
    start = release.release - (resume.round if resume is not None else 0)
    common: dict[str, Any] = {
        "release_offset": start,
        "checkpoints": checkpoints,
        "resume": resume,
        "fingerprint": {"n_items": len(release.catalog), "model": model.name},
        "on_round": on_round,
        "population": deployment.population,
        "release_key": private,
        "releases": ReleaseWriter(
            deployment.releases,
            private_key=private,
            public_key=public,
            model=model,
            identity=release.identity,  # the run's releases are the starting release's
            extras=carried_extras(release),  # and serve its experiments
        ),
    }
    experiments = experiment_arms(release.extras)
    try:
        candidates = candidate_policies(release.extras)
    except ConfigError as error:
        raise ConfigError(f"release {release.release}: {error}") from None
    if settings.analytics.experiments.every and deployment.population is None:
        raise ConfigError(
            "run config: experiment measurements need 'population' (the number of enrolled "
            "devices, all of which are asked), which also sets their default delta"
        )
    if deployment.train == "ranker":
        carried = None if release.ranker is None else list(release.ranker)
        hidden = 0 if carried is None else ranker_hidden(carried)
        if carried is not None and hidden != deployment.ranker.hidden:
            _log.warning(
                "the starting release's ranker has %d hidden units, the run %d: the run "
                "starts from the retrieval order",
                hidden,
                deployment.ranker.hidden,
            )
            carried = None
        strategy: FederatedAveraging = RankerAveraging(
            settings,
            ranker=deployment.ranker,
            retrieval=release.shared_arrays(),
            initial=carried,
            trending=release.trending,
            **common,
        )
    else:
        strategy = FederatedAveraging(settings, initial=release.shared_arrays(), **common)
        strategy.trending = release.trending
        strategy.carried_ranker = None if release.ranker is None else list(release.ranker)
    if settings.analytics.experiments.every:
        if not experiments and not candidates:
            _log.warning(
                "experiment-every is %d, but the starting release carries no experiments "
                "and no candidate policies: nothing to measure (stamen experiment publish, "
                "stamen experiment candidates)",
                settings.analytics.experiments.every,
            )
        strategy.measure_experiments(experiments, experiment_metrics(release.extras))
        strategy.evaluate_candidates(candidates)
    return strategy


def carried_extras(release: ReleaseBundle) -> dict[str, Any]:
    """What of the starting release's ``extras`` every release of the run carries: its
    experiments (the devices keep serving their arms) and candidate policies (the devices
    keep evaluating them)."""
    return {k: v for k, v in release.extras.items() if k in (EXPERIMENTS_EXTRA, CANDIDATES_EXTRA)}


def serve(grid: Grid, context: Context) -> None:
    """The ServerApp's body in the ``deployment`` runtime (module docstring). The run's
    outcome goes to ``<checkpoints>/status.json`` (:class:`RunStatus`): Flower reports
    every run as completed, whatever happened in it."""
    from stamen.server.app import run_rounds
    from stamen.server.grid import PromptGrid

    config = dict(context.run_config)
    folder = config.get("checkpoints")
    status = None if not folder else RunStatus(Path(str(folder)), run_id=context.run_id)
    if status is not None:
        status.write("running")
    metrics = None
    try:
        deployment = Deployment(config)
        if deployment.metrics_address is not None:
            metrics = RunMetrics()
            host, port = metrics.serve(deployment.metrics_address)
            _log.info("run %s: Prometheus metrics at http://%s:%d/", context.run_id, host, port)
        strategy = deployment_strategy(deployment, metrics)
        if metrics is not None:
            metrics.epsilon_budget = strategy.settings.dp.target_epsilon
        grid = PromptGrid(grid, timeout=deployment.reply_timeout)
        if deployment.devices is not None:
            strategy.identify = KeyIdentities(deployment.devices, grid.get_nodes)
        else:
            _log.warning("run %s: %s", context.run_id, SELF_DECLARED)
            if status is not None:
                status.warn(SELF_DECLARED)
        run_rounds(grid, context, strategy)
    except BaseException as error:
        if status is not None:
            status.write("failed", reason=f"{type(error).__name__}: {error}")
        _log.error("run %s failed: %s: %s", context.run_id, type(error).__name__, error)
        raise
    finally:
        if metrics is not None:
            metrics.close()
    if status is not None:
        status.write("completed")


class RunStatus:
    """A deployment run's outcome, as ``<checkpoints>/status.json``: ``{"run_id",
    "status": "running" | "completed" | "failed", "reason", "time", "warnings"}``,
    replaced atomically (owner-only) as the run starts and ends. ``stamen deploy status``
    reads it and exits with the run's outcome."""

    FILE = "status.json"

    def __init__(self, folder: Path, *, run_id: int) -> None:
        self.path = folder / self.FILE
        self.run_id = int(run_id)
        self.warnings: list[str] = []
        self._last: tuple[str, str | None] = ("running", None)

    def write(self, status: str, *, reason: str | None = None) -> None:
        """Record ``status`` (and why, when it failed), with the run's warnings."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._last = (status, reason)
        body = {
            "run_id": self.run_id,
            "status": status,
            "reason": reason,
            "time": time.time(),
            "warnings": self.warnings,
        }
        write_atomically(self.path, json.dumps(body).encode(), mode=0o600)

    def warn(self, warning: str) -> None:
        """Record ``warning`` with the run's current status."""
        self.warnings.append(warning)
        status, reason = self._last
        self.write(status, reason=reason)

    @classmethod
    def read(cls, folder: Path) -> dict[str, Any] | None:
        """The recorded outcome in ``folder`` (``None``: no run recorded one)."""
        path = folder / cls.FILE
        try:
            body = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise CheckpointError(f"{path}: unreadable run status ({error})") from None
        if not isinstance(body, dict) or body.get("status") not in {
            "running",
            "completed",
            "failed",
        }:
            raise CheckpointError(f"{path}: not a run status")
        return body
