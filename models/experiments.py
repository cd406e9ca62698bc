"""What a device and the server agree on about an A/B experiment's measurement: the metrics,
their per-person bounds, the layout of a device's contribution and its sensitivity, and
what the server reads of the experiments a release carries.

A device contributes, per experiment, one block of :func:`statistics` per arm (its own arm's
block filled, the others zero; ``stamen.client.device.experiments``); the server sums them
securely and reports (``stamen.server.experiment_stats``). A release carries its
experiments in its manifest's ``extras["experiments"]`` (:data:`EXPERIMENTS_EXTRA`), a list
of ``{"id", "salt", "arms": [{"name", "weight", "overrides"}, …], "guardrails": […]}``
(``guardrails`` optional); the device validates them in full (its pipeline's settings), the
server reads the ids and arm names (:func:`experiment_arms`) and each experiment's metric
set (:func:`experiment_metrics`).

**Metric sets.** Every experiment measures the four :data:`METRICS`; one that names
guardrails (a subset of :data:`GUARDRAILS`) measures them too, after the four, in
:data:`GUARDRAILS`' order (:func:`metric_set`). With ``M`` metrics one arm's block has
``1 + 2M`` coordinates (``1 + 5M`` with covariates) and the L2 sensitivity is
:func:`sensitivity` of ``M``. Without guardrails the set is :data:`METRICS` and the layouts
are :data:`STATISTICS` and :data:`COVARIATE_STATISTICS`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stamen.errors import ConfigError

__all__ = [
    "COVARIATE_STATISTICS",
    "EXPERIMENTS_EXTRA",
    "GUARDRAILS",
    "METRICS",
    "STATISTICS",
    "Checked",
    "MetricBounds",
    "experiment_arms",
    "experiment_metrics",
    "metric_set",
    "problem_list",
    "problems_text",
    "sensitivity",
    "statistics",
]

#: The key of a release manifest's ``extras`` that holds its experiments.
EXPERIMENTS_EXTRA = "experiments"

#: The metrics a device measures, in the order of their blocks.
METRICS: tuple[str, ...] = ("exposures", "engagement", "positive_rate", "not_interested")

#: The guardrails an experiment may add to :data:`METRICS`, in the order of their blocks:
#: lists' intra-list ``diversity`` (higher is better) and recommend ``latency`` (lower is
#: better; ``stamen.client.device.experiments``).
GUARDRAILS: tuple[str, ...] = ("diversity", "latency")

_SUFFIXES = ("", "_sq")
_COVARIATE_SUFFIXES = ("", "_sq", "_pre", "_pre_sq", "_pre_x")

#: The names of one arm's block of coordinates: the count, then each metric's sum and sum of
#: squares (of the value divided by its bound).
STATISTICS: tuple[str, ...] = ("n", *(f"{m}{s}" for m in METRICS for s in _SUFFIXES))

#: The block with pre-experiment covariates (CUPED): the count, then per metric ``y``,
#: ``y²``, the pre-period value ``x``, ``x²`` and ``x·y``.
COVARIATE_STATISTICS: tuple[str, ...] = (
    "n",
    *(f"{m}{s}" for m in METRICS for s in _COVARIATE_SUFFIXES),
)


def metric_set(guardrails: Iterable[str] = ()) -> tuple[str, ...]:
    """The metrics of an experiment with ``guardrails``: :data:`METRICS`, then each guardrail
    it names in :data:`GUARDRAILS`' order (the order they are given does not matter).

    Raises:
        ConfigError: a guardrail not in :data:`GUARDRAILS`, or one named twice.
    """
    chosen = list(guardrails)
    unknown = [g for g in chosen if g not in GUARDRAILS]
    if unknown or len(set(chosen)) != len(chosen):
        raise ConfigError(f"guardrails: {chosen} must be distinct names among {list(GUARDRAILS)}")
    return (*METRICS, *(g for g in GUARDRAILS if g in chosen))


def problem_list(error: ValidationError) -> list[tuple[str, str]]:
    """``(field path, message)`` of every problem, a nested model's problems under its
    path; a list's length error is left out when its items failed (it follows from them)."""
    found: list[tuple[str, str]] = []
    for e in error.errors():
        where = ".".join(str(p) for p in e["loc"])
        cause = (e.get("ctx") or {}).get("error")
        nested = getattr(cause, "problems", None)
        if nested:
            found += [(f"{where}.{field}" if where else field, msg) for field, msg in nested]
            continue
        message = e["msg"].removeprefix("Value error, ")
        found.append((where, message))
    failed_items = {w.split(".")[0] for w, _ in found if "." in w}
    return [
        (w, m) for w, m in found if not (w in failed_items and m.startswith("Tuple should have"))
    ]


def problems_text(error: ValidationError) -> str:
    """:func:`problem_list` as one line."""
    return "; ".join(f"{w}: {m}" if w else m for w, m in problem_list(error))


class Checked(BaseModel):
    """A frozen model whose validation errors surface as one ``ConfigError`` naming every
    field at fault (its ``problems``: ``(field path, message)`` pairs)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as error:
            problems = problem_list(error)
            config_error = ConfigError(f"{type(self).__name__}: {problems_text(error)}")
            config_error.problems = problems  # type: ignore[attr-defined]
            raise config_error from None


class MetricBounds(Checked):
    """The per-person clip bounds and the measurement's windows
    (``stamen.client.device.experiments``)."""

    max_sessions: int = Field(20, ge=1)
    max_positive_rate: float = Field(5.0, gt=0, allow_inf_nan=False)
    session_gap_s: float = Field(1800.0, gt=0, allow_inf_nan=False)
    attribution_s: float = Field(86400.0, gt=0, allow_inf_nan=False)
    max_latency_s: float = Field(1.0, gt=0, allow_inf_nan=False)

    def bounds(self, metrics: Sequence[str] = METRICS) -> np.ndarray:
        """Each metric's bound, in the order of ``metrics`` (a :func:`metric_set`): the
        sessions and positive-rate bounds, 1 for the per-impression rates and diversity,
        ``max_latency_s`` for latency."""
        known = {
            "exposures": float(self.max_sessions),
            "engagement": 1.0,
            "positive_rate": self.max_positive_rate,
            "not_interested": 1.0,
            "diversity": 1.0,
            "latency": self.max_latency_s,
        }
        return np.array([known[m] for m in metrics])


def sensitivity(metrics: int = len(METRICS), *, covariates: bool = False) -> float:
    """The L2 sensitivity of the summed contributions: ``sqrt(1 + 2 · metrics)``, or
    ``sqrt(1 + 5 · metrics)`` with pre-experiment covariates
    (``stamen.client.device.experiments``)."""
    return math.sqrt(1 + (5 if covariates else 2) * metrics)


def statistics(metrics: Sequence[str] = METRICS, *, covariates: bool = False) -> tuple[str, ...]:
    """The names of one arm's block for ``metrics`` (a :func:`metric_set`): the count, then
    each metric's sums; :data:`STATISTICS` (or :data:`COVARIATE_STATISTICS` with
    pre-experiment covariates) for :data:`METRICS`."""
    suffixes = _COVARIATE_SUFFIXES if covariates else _SUFFIXES
    return ("n", *(f"{m}{s}" for m in metrics for s in suffixes))


def experiment_arms(extras: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """The arm names of each experiment a release's ``extras`` carry, by experiment id, in
    the release's order (what the server needs to ask for and read a measurement).

    Raises:
        ConfigError: not a list of experiments with distinct ids, at least two named arms
            and known guardrails.
    """
    return {id: arms for id, (arms, _) in _experiments(extras).items()}


def experiment_metrics(extras: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """The metric set (:func:`metric_set`) of each experiment a release's ``extras`` carry,
    by experiment id, in the release's order.

    Raises:
        ConfigError: as :func:`experiment_arms`.
    """
    return {id: metrics for id, (_, metrics) in _experiments(extras).items()}


def _experiments(
    extras: Mapping[str, Any],
) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Each experiment's arm names and metric set, by id (:func:`experiment_arms`)."""
    raw = extras.get(EXPERIMENTS_EXTRA, [])
    if not isinstance(raw, list):
        raise ConfigError(f"extras.{EXPERIMENTS_EXTRA}: a list, not {type(raw).__name__}")
    found: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    for k, item in enumerate(raw):
        where = f"extras.{EXPERIMENTS_EXTRA}.{k}"
        arms = item.get("arms") if isinstance(item, dict) else None
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise ConfigError(f"{where}: an object with a string id")
        if not isinstance(arms, list) or len(arms) < 2:
            raise ConfigError(f"{where}: arms must list at least two arms")
        names = tuple(str(a.get("name", "")) if isinstance(a, dict) else "" for a in arms)
        if not all(names) or len(set(names)) != len(names):
            raise ConfigError(f"{where}: arm names must be distinct and not empty ({names})")
        if item["id"] in found:
            raise ConfigError(f"{where}: experiment id {item['id']!r} repeats")
        guardrails = item.get("guardrails", [])
        if not isinstance(guardrails, list):
            raise ConfigError(f"{where}.guardrails: a list, not {type(guardrails).__name__}")
        try:
            metrics = metric_set(guardrails)
        except ConfigError as error:
            raise ConfigError(f"{where}.{error}") from None
        found[item["id"]] = (names, metrics)
    return found
