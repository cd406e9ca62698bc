"""What the deployment ServerApp (``stamen.server.app:server_app``) runs.

It reads server settings only, from the run config (``flwr run . <federation>
--run-config "k=v ..."``, flat kebab-case keys, see :data:`RUN_CONFIG_KEYS`); it loads no
data set and writes no device store. The catalogue and the model come from the newest
signed release in the ``releases`` folder (release 0 is the operator's starting point,
``stamen release init``); every round publishes the next signed release there and a
checkpoint (global model, server optimiser, privacy accountant, round, history) under
``checkpoints``; ``resume=true`` continues a killed run from its last checkpoint with ε
continuing. One JSON line per round goes to ``<checkpoints>/rounds.jsonl``.

``train`` picks what the run trains: ``model`` (the default) the retrieval model, whose
releases carry the starting release's ranker and trending counts unchanged until the run
replaces them; ``ranker`` the pipeline's ranker (``stamen.server.ranker_strategy``,
settings ``ranker-hidden``, ``ranker-local-lr``, ``ranker-local-steps``,
``ranker-weight-decay``), starting from the release's ranker (or the retrieval order),
each device learning from the example it replays against the release it has installed;
its releases carry the retrieval model unchanged, and, with ``population`` given and
SecAgg+ on, its last round asks the devices for the ranker's metrics on their own lists
as a secure sum.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from stamen.errors import ConfigError
from stamen.models.bundle import ReleaseBundle
from stamen.models.ranker.model import RankerSettings, ranker_hidden
from stamen.models.registry import build_model
from stamen.privacy import open_signed
from stamen.server.checkpoint import CheckpointStore
from stamen.server.ranker_strategy import RankerAveraging
from stamen.server.releases import ReleaseWriter, latest_release, load_or_create_signing_key
from stamen.server.settings import ServerSettings
from stamen.server.strategy import FederatedAveraging

__all__ = [
    "RANKER_KEYS",
    "RUN_CONFIG_KEYS",
    "SECAGG_TIMEOUT_S",
    "TRAINED",
    "Deployment",
    "deployment_strategy",
    "settings_overrides",
]

_log = logging.getLogger("stamen")

#: Run-config key -> (section of ``ServerSettings`` or ``None`` for top level, field).
RUN_CONFIG_KEYS: dict[str, tuple[str | None, str]] = {
    "num-server-rounds": (None, "rounds"),
    "clients-per-round": (None, "clients_per_round"),
    "seed": (None, "seed"),
    "connect-timeout": (None, "connect_timeout"),
    "secure-aggregation": ("secagg", "enabled"),
    "secagg-num-shares": ("secagg", "num_shares"),
    "secagg-reconstruction-threshold": ("secagg", "reconstruction_threshold"),
    "secagg-clipping-range": ("secagg", "clipping_range"),
    "secagg-timeout": ("secagg", "timeout"),
    "dp": ("dp", "mode"),
    "dp-epsilon": ("dp", "target_epsilon"),
    "dp-delta": ("dp", "delta"),
    "dp-noise-multiplier": ("dp", "noise_multiplier"),
    "dp-clip-norm": ("dp", "clip_norm"),
    "trending-every": ("analytics.trending", "every"),
    "trending-window-days": ("analytics.trending", "window_days"),
    "trending-cap": ("analytics.trending", "cap"),
    "trending-clients": ("analytics.trending", "clients"),
    "trending-dp": ("analytics.trending.dp", "mode"),
    "trending-epsilon": ("analytics.trending.dp", "target_epsilon"),
    "trending-noise-multiplier": ("analytics.trending.dp", "noise_multiplier"),
}

#: Seconds each SecAgg+ stage waits for replies in a deployment unless the run config says
#: otherwise (``secagg-timeout``): a device that does not answer in time has dropped out.
SECAGG_TIMEOUT_S = 120.0

#: Run-config keys of the ranker's shape and device step (``train = "ranker"``).
RANKER_KEYS = {f"ranker-{name.replace('_', '-')}": name for name in RankerSettings.model_fields}

#: Keys of the deployment itself (folders, key, population, resume, what it trains).
_OPERATIONS = ("releases", "checkpoints", "signing-key", "population", "resume", "train")

#: What a deployment run may train (``train``).
TRAINED = ("model", "ranker")


def settings_overrides(run_config: dict[str, Any]) -> dict[str, Any]:
    """``ServerSettings`` fields set in ``run_config`` (empty strings: unset), nested by
    section (a dotted section nests deeper)."""
    out: dict[str, Any] = {}
    for key, (section, name) in RUN_CONFIG_KEYS.items():
        value = run_config.get(key, "")
        if value == "" or value is None:
            continue
        target = out
        for part in section.split(".") if section else ():
            target = target.setdefault(part, {})
        target[name] = value
    return out


class Deployment:
    """A deployment run's validated settings (see module docstring)."""

    def __init__(self, run_config: dict[str, Any]) -> None:
        known = set(RUN_CONFIG_KEYS) | set(_OPERATIONS) | set(RANKER_KEYS)
        unknown = sorted(set(run_config) - known)
        if unknown:
            raise ConfigError(f"run config: unknown keys {unknown}; known: {sorted(known)}")
        for key in ("releases", "checkpoints", "signing-key"):
            if str(run_config.get(key, "")) == "":
                raise ConfigError(f"run config: {key!r} is required in a deployment")
        self.releases = Path(str(run_config["releases"]))
        self.checkpoints = Path(str(run_config["checkpoints"]))
        self.signing_key = Path(str(run_config["signing-key"]))
        population = run_config.get("population", "")
        self.population = None if population in ("", None) else int(population)
        self.resume = str(run_config.get("resume", "false")).lower() in ("true", "1", "yes")
        self.train = str(run_config.get("train", "") or "model")
        if self.train not in TRAINED:
            raise ConfigError(f"run config: train is {self.train!r}; known: {list(TRAINED)}")
        ranker = {
            name: run_config[key]
            for key, name in RANKER_KEYS.items()
            if run_config.get(key, "") not in ("", None)
        }
        if ranker and self.train != "ranker":
            raise ConfigError(f"run config: {sorted(ranker)} set, but train is {self.train!r}")
        try:
            self.ranker = RankerSettings.model_validate(ranker)
        except ValidationError as error:
            raise ConfigError(f"run config: {_problems(error, 'ranker-')}") from None
        self.overrides = settings_overrides(run_config)
        # a real device can vanish: every SecAgg+ stage waits a bounded time
        self.overrides.setdefault("secagg", {}).setdefault("timeout", SECAGG_TIMEOUT_S)
        # deployed devices keep no held-out items: no evaluation rounds to wait for, but
        # a ranker run's last round, which asks every enrolled device about its own
        # offered list as a secure sum (with 'population' known: it sizes the query;
        # never in the clear: deployed devices send no metrics in plain mode)
        self.overrides["evaluate"] = self.train == "ranker" and self.population is not None
        if self.train == "ranker":
            self.overrides["eval_every"] = 0

    def starting_release(self, public_key: bytes) -> ReleaseBundle:
        """The newest signed release in ``releases`` (its signature checked)."""
        path = latest_release(self.releases)
        if path is None:
            raise ConfigError(f"{self.releases}: no release to start from (stamen release init)")
        data = path.read_bytes()
        payload = open_signed(data, public_key=public_key, source=str(path))
        return ReleaseBundle.decode(payload, source=str(path))


def deployment_strategy(deployment: Deployment) -> FederatedAveraging:
    """The run's strategy: settings from the run config, model and catalogue from the
    newest signed release, resumed from the last checkpoint when asked."""
    if not deployment.signing_key.is_file():
        raise ConfigError(f"{deployment.signing_key}: no release signing key")
    private, public = load_or_create_signing_key(deployment.signing_key)
    release = deployment.starting_release(public)
    model = build_model(release.model, dict(release.settings), release.catalog)
    try:
        settings = ServerSettings.model_validate(
            {
                **deployment.overrides,
                "model": model.name,
                model.settings_field: model.settings.model_dump(),
            }
        )
    except ValidationError as error:
        raise ConfigError(f"run config: {_problems(error)}") from None
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
    log = deployment.checkpoints / "rounds.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)

    def on_round(record: dict[str, Any]) -> None:
        line = json.dumps({"time": time.time(), **record}, default=str)
        with log.open("a") as handle:
            handle.write(line + "\n")
        _log.info(line)

    common: dict[str, Any] = {
        "checkpoints": checkpoints,
        "resume": resume,
        "fingerprint": {"n_items": len(release.catalog), "model": model.name},
        "on_round": on_round,
        "population": deployment.population,
        "release_key": private,
        "releases": ReleaseWriter(
            deployment.releases, private_key=private, public_key=public, model=model
        ),
    }
    if deployment.train == "ranker":
        # release N of the run follows the starting one (after a resume: the run's first)
        start = release.release - (resume.round if resume is not None else 0)
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
        return RankerAveraging(
            settings,
            ranker=deployment.ranker,
            retrieval=release.shared_arrays(),
            release_offset=start,
            initial=carried,
            trending=release.trending,
            **common,
        )
    strategy = FederatedAveraging(settings, initial=release.shared_arrays(), **common)
    strategy.trending = release.trending
    strategy.carried_ranker = None if release.ranker is None else list(release.ranker)
    return strategy


def _problems(error: ValidationError, prefix: str = "") -> str:
    """A pydantic error as ``field: message; …``; with ``prefix``, fields are spelled as
    run-config keys (``ranker-`` + kebab case)."""
    problems = []
    for e in error.errors():
        field = ".".join(map(str, e["loc"]))
        if prefix:
            field = prefix + field.replace("_", "-")
        problems.append(f"{field}: {e['msg']}")
    return "; ".join(problems)
