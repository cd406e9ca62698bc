"""A/B experiments on the device: the definition, self-assignment and what a person contributes.

**Definition.** An :class:`Experiment` (part of a signed release) has an id, a salt and two or
more :class:`Arm` s, each a named variant with a weight and a dict of
``stamen.client.pipeline.recommend.PipelineSettings`` overrides (``{"explore": 0.1}``).
Building one validates every field and raises one ``ConfigError`` naming each problem
(``arms.1.weight: ...``).

**Assignment** (:func:`assign`, nothing sent). The device computes
``HMAC-SHA256(key=device_secret, msg=id ‖ 0x00 ‖ salt)``, reads its first 53 bits as
``u ∈ [0, 1)`` and serves the first arm whose cumulative weight share exceeds ``u``. HMAC is a
pseudo-random function of its message under the device's own secret, so ``u`` is uniform over
devices, the same at every call (stable across sessions and releases that keep the id and
salt), and independent between two experiments (different messages); the server, which never
learns the secret, cannot recompute it.

**Measurement** (:func:`person_counts`, :func:`contributions`). Over a window
``[start, end)`` the device counts, from its impression log and events:

- ``exposures``: sessions with an impression (impressions more than ``session_gap_s``
  apart start a new session), bound ``max_sessions``;
- ``engagement``: impressions followed by a positive event on their item within
  ``attribution_s``, per impression, bound 1;
- ``positive_rate``: positive events (any item) per exposed session, bound
  ``max_positive_rate``;
- ``not_interested``: ``not_interested`` events on a shown item within ``attribution_s``,
  per impression (a guardrail), bound 1.

An experiment may add guardrails (``Experiment.guardrails``, measured after the four, in
``stamen.models.experiments.GUARDRAILS``' order):

- ``diversity``: the mean over the person's shown lists (requests) of the list's intra-list
  diversity (:func:`list_diversity`): 1 − the mean Jaccard similarity of the genre (or tag)
  sets of its items' pairs, in ``[0, 1]``, bound 1. The genres are those of the installed
  release's catalogue; an item without genres, or not in that catalogue, is left out of
  its list's pairs, and a list with fewer than two items left has diversity 0 (no variety
  was measured; the rule is the same in every arm);
- ``latency``: the mean seconds ``Device.recommend`` took to build the person's shown lists
  (``Impression.latency_s``), bound ``max_latency_s``; lists logged without a latency (built
  by the app, or logged before the store recorded it) are left out of the mean, and a person
  none of whose lists has one counts 0.

Each value is clipped to ``[0, bound]`` and divided by its bound (``y ∈ [0, 1]``). A person
with no impression in the window contributes nothing (a zero vector). An exposed person in arm
``a`` contributes, in the ``a``-th block of ``1 + 2M`` coordinates (``M`` = 4 metrics and the
experiment's guardrails), the layout ``stamen.models.experiments.statistics(metrics)``
(``STATISTICS`` without guardrails: exactly the vector of an experiment defined before
guardrails existed)::

    [1, y_1, y_1², y_2, y_2², …, y_M, y_M²]

and zeros in every other arm's block. The sums over people give each arm's count ``n``, its
sums ``Σy`` (the mean) and ``Σy²`` (its sampling variance), which is all the server needs
(``stamen.server.experiment_stats``).

**Sensitivity.** Adding or removing one person changes the summed vector by that person's
vector, of squared L2 norm ``1 + Σ_m (y_m² + y_m⁴) ≤ 1 + 2M`` (at ``y_m = 1``), so the L2
sensitivity is ``stamen.models.experiments.sensitivity(M) = sqrt(1 + 2M)``: 3 for the four
metrics, √11 and √13 with one and two guardrails; the Gaussian-sum mechanism
(``stamen.privacy.dp.gaussian``) is calibrated to it. A person who switches arms between two
neighbouring data sets (replace-one adjacency) moves it by at most ``√2`` times as much.

**Pre-experiment covariates (CUPED, optional).** Given the person's counts over a pre-period
window before the assignment takes effect (``pre``), each metric's block grows to the layout
``statistics(metrics, covariates=True)``, ``[y_m, y_m², x_m, x_m², x_m·y_m]`` with
``x_m ∈ [0, 1]`` the same metric over the pre-period, scaled by the same bound (``0`` for a
person without an impression then). The squared norm is then
``1 + Σ_m (y² + y⁴ + x² + x⁴ + x²y²) ≤ 1 + 5M``, so ``sensitivity(M, covariates=True)`` is
``sqrt(1 + 5M)`` (√21 for four metrics, √26 and √31 with one and two guardrails).
Without ``pre`` every function returns exactly what it did before.

This module is the device's serving path: it imports numpy and the standard library only
(``PipelineSettings`` is imported when an experiment's overrides are validated).
"""

from __future__ import annotations

import bisect
import dataclasses
import hmac
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field, field_validator, model_validator

from stamen.client.device.events import RATING_THRESHOLD, Event, is_positive
from stamen.client.device.impressions import Impression, engagement_rewards
from stamen.errors import ConfigError
from stamen.models.experiments import (
    METRICS,
    Checked,
    MetricBounds,
    metric_set,
    statistics,
)
from stamen.models.off_policy import DEFAULT_MAX_WEIGHT

if TYPE_CHECKING:
    from stamen.client.pipeline.recommend import PipelineSettings

__all__ = [
    "Arm",
    "CandidatePolicy",
    "Experiment",
    "ItemGenres",
    "PersonCounts",
    "assign",
    "assignment_unit",
    "candidate_list",
    "contribution",
    "contributions",
    "list_diversity",
    "metric_values",
    "person_counts",
    "summed_contributions",
]

_BITS = 53

#: The genre (or tag) ids of each of the given items: an empty array for an item without
#: genres or not in the catalogue (the installed release's, on a device).
ItemGenres = Callable[[Sequence[str]], Sequence[np.ndarray]]


class _Overriding(Checked):
    """A variant of the app's pipeline (an arm, a candidate policy): its ``overrides``, a
    field each subclass declares in its own place, must be ``PipelineSettings`` fields."""

    if TYPE_CHECKING:
        overrides: dict[str, Any]

    @field_validator("overrides", check_fields=False)
    @classmethod
    def _settings(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        from stamen.client.pipeline.recommend import PipelineSettings

        try:
            PipelineSettings.model_validate(overrides)
        except ConfigError as error:
            raise ValueError(f"not valid pipeline settings ({error})") from None
        return overrides

    def settings(self, base: PipelineSettings) -> PipelineSettings:
        """``base`` with these overrides applied (validated again)."""
        return base.model_copy(update=self.overrides)


class Arm(_Overriding):
    """One arm: its name, its weight (relative share of devices) and the
    ``PipelineSettings`` fields it overrides."""

    name: str = Field(min_length=1, max_length=64)
    weight: float = Field(1.0, gt=0, allow_inf_nan=False)
    overrides: dict[str, Any] = Field(default_factory=dict)


class CandidatePolicy(_Overriding):
    """A candidate policy a release ships for off-policy evaluation
    (``stamen.models.off_policy``): its name, the ``PipelineSettings`` fields it overrides
    (over the app's own settings; no device serves it) and the clip of its importance
    weights (``stamen.client.device.off_policy``)."""

    name: str = Field(min_length=1, max_length=64)
    overrides: dict[str, Any] = Field(default_factory=dict)
    max_weight: float = Field(DEFAULT_MAX_WEIGHT, ge=1, allow_inf_nan=False)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (what a release's ``extras`` carry)."""
        return self.model_dump(mode="json")


def candidate_list(raw: Any) -> tuple[CandidatePolicy, ...]:
    """The candidate policies of a release's ``extras[CANDIDATES_EXTRA]`` (or a definition
    file's list), each validated in full; the names distinct.

    Raises:
        ConfigError: naming each candidate at fault by its place (``3.max_weight: …``).
    """
    if not isinstance(raw, list):
        raise ConfigError(f"candidate policies: a list, not {type(raw).__name__}")
    found, problems = [], []
    for k, item in enumerate(raw):
        if not isinstance(item, dict):
            problems.append(f"{k}: an object, not {type(item).__name__}")
            continue
        try:
            found.append(CandidatePolicy(**item))
        except ConfigError as error:
            problems.append(f"{k}: {str(error).removeprefix('CandidatePolicy: ')}")
    names = [item.get("name") for item in raw if isinstance(item, dict)]
    if len(set(map(str, names))) != len(names):
        problems.append(f"candidate names repeat ({names})")
    if problems:
        raise ConfigError("candidate policies: " + "; ".join(problems))
    return tuple(found)


class Experiment(Checked):
    """An experiment: its id, salt, arms and guardrails, a subset of
    ``stamen.models.experiments.GUARDRAILS`` measured beside the four metrics (module
    docstring)."""

    id: str = Field(min_length=1, max_length=128)
    salt: str = Field(min_length=1, max_length=128)
    arms: tuple[Arm, ...] = Field(min_length=2)
    guardrails: tuple[str, ...] = ()

    @field_validator("guardrails")
    @classmethod
    def _known_guardrails(cls, guardrails: tuple[str, ...]) -> tuple[str, ...]:
        try:
            metric_set(guardrails)
        except ConfigError as error:
            raise ValueError(str(error).removeprefix("guardrails: ")) from None
        return guardrails

    @model_validator(mode="after")
    def _unique_names(self) -> Experiment:
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arms: names repeat ({names})")
        return self

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Experiment:
        """An experiment from its JSON form (``to_json``)."""
        if not isinstance(data, dict):
            raise ConfigError(f"Experiment: expected a mapping, got {type(data).__name__}")
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (without ``guardrails`` when it names none, as an experiment
        was written before guardrails existed)."""
        data = self.model_dump(mode="json")
        if not self.guardrails:
            del data["guardrails"]
        return data

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics it measures: the four, then its guardrails
        (``stamen.models.experiments.metric_set``)."""
        return metric_set(self.guardrails)

    @property
    def arm_names(self) -> tuple[str, ...]:
        """The arms' names, in order."""
        return tuple(arm.name for arm in self.arms)

    def cumulative_shares(self) -> list[float]:
        """Each arm's upper end in ``[0, 1]`` (the last is exactly 1)."""
        weights = [arm.weight for arm in self.arms]
        total = math.fsum(weights)
        shares = [math.fsum(weights[: i + 1]) / total for i in range(len(weights))]
        shares[-1] = 1.0
        return shares

    def arm_of(self, unit: float | np.ndarray) -> int | np.ndarray:
        """The arm index of assignment unit(s) ``u ∈ [0, 1)`` (vectorised for arrays)."""
        shares = self.cumulative_shares()
        if isinstance(unit, np.ndarray):
            return np.searchsorted(np.asarray(shares), unit, side="right").astype(np.int64)
        return bisect.bisect_right(shares, unit)


def assignment_unit(experiment: Experiment, *, device_secret: bytes) -> float:
    """``u ∈ [0, 1)`` from HMAC-SHA256 of the experiment's id and salt under the device's
    secret (module docstring)."""
    if not isinstance(device_secret, bytes):
        raise ValueError(f"device_secret must be bytes, not {type(device_secret).__name__}")
    if len(device_secret) < 16:
        raise ValueError("device_secret must be at least 16 random bytes")
    message = experiment.id.encode() + b"\x00" + experiment.salt.encode()
    digest = hmac.digest(device_secret, message, "sha256")
    return (int.from_bytes(digest[:8], "big") >> (64 - _BITS)) / float(1 << _BITS)


def assign(experiment: Experiment, *, device_secret: bytes) -> int:
    """The index of the arm this device serves (nothing is sent)."""
    return int(experiment.arm_of(assignment_unit(experiment, device_secret=device_secret)))


@dataclass(frozen=True)
class PersonCounts:
    """Raw counts over a window, one entry per person (arrays) or for one person (0-d):
    sessions with an impression, impressions, engaged impressions, positive events and
    ``not_interested`` events on shown items; for the guardrails (``None``: not counted),
    shown lists and the sum of their diversities, and lists with a measured latency and the
    sum of their latencies in seconds."""

    sessions: np.ndarray
    impressions: np.ndarray
    engaged: np.ndarray
    positives: np.ndarray
    not_interested: np.ndarray
    lists: np.ndarray | None = None
    diversity: np.ndarray | None = None
    timed: np.ndarray | None = None
    latency_s: np.ndarray | None = None


def list_diversity(genres: Sequence[np.ndarray]) -> float:
    """A shown list's intra-list diversity from its items' genre ids: 1 − the mean Jaccard
    similarity ``|A ∩ B| / |A ∪ B|`` of the genre sets over the pairs of its items that have
    genres (an item without any is left out); 0 when fewer than two items have genres."""
    sets = [np.unique(np.asarray(g, np.int64)) for g in genres if len(g)]
    if len(sets) < 2:
        return 0.0
    columns = np.unique(np.concatenate(sets))
    member = np.zeros((len(sets), len(columns)))
    for i, g in enumerate(sets):
        member[i, np.searchsorted(columns, g)] = 1.0
    common = member @ member.T
    sizes = member.sum(axis=1)
    upper = np.triu_indices(len(sets), k=1)
    jaccard = common[upper] / (sizes[:, None] + sizes[None, :] - common)[upper]
    return float(1.0 - jaccard.mean())


def _sessions(times: np.ndarray, gap_s: float) -> int:
    if not len(times):
        return 0
    times = np.sort(times)
    return 1 + int(np.count_nonzero(np.diff(times) > gap_s))


def person_counts(
    events: Iterable[Event],
    impressions: Sequence[Impression],
    *,
    start: float,
    end: float,
    bounds: MetricBounds,
    rating_threshold: float | None = RATING_THRESHOLD,
    metrics: Sequence[str] = METRICS,
    genres: ItemGenres | None = None,
) -> PersonCounts:
    """One person's counts over ``[start, end)`` from their events and impression log; the
    guardrails' counts where ``metrics`` names them (``diversity`` needs ``genres``).

    Raises:
        ValueError: ``metrics`` names diversity and ``genres`` is not given.
    """
    events = list(events)
    shown = [i for i in impressions if start <= i.at < end]
    requests: dict[int, list[Impression]] = {}
    for i in shown:
        requests.setdefault(i.request, []).append(i)
    guardrails: dict[str, np.ndarray] = {}
    if "diversity" in metrics:
        if genres is None:
            raise ValueError("the diversity guardrail needs the items' genres")
        ordered = [sorted(slots, key=lambda i: i.position) for slots in requests.values()]
        diversities = [list_diversity(genres([i.item for i in slots])) for slots in ordered]
        guardrails["lists"] = np.asarray(len(requests))
        guardrails["diversity"] = np.asarray(math.fsum(diversities))
    if "latency" in metrics:
        latencies = [s[0].latency_s for s in requests.values() if s[0].latency_s is not None]
        guardrails["timed"] = np.asarray(len(latencies))
        guardrails["latency_s"] = np.asarray(math.fsum(latencies))
    engaged = engagement_rewards(
        shown, events, window_s=bounds.attribution_s, rating_threshold=rating_threshold
    )
    rejected: dict[str, list[float]] = {}
    for event in events:
        if event.kind == "not_interested":
            rejected.setdefault(event.item, []).append(event.at)
    not_interested = sum(
        any(0 <= at - i.at <= bounds.attribution_s for at in rejected.get(i.item, ()))
        for i in shown
    )
    positives = sum(
        start <= e.at < end and is_positive(e.kind, e.value, rating_threshold) for e in events
    )
    return PersonCounts(
        sessions=np.asarray(_sessions(np.array([i.at for i in shown]), bounds.session_gap_s)),
        impressions=np.asarray(len(shown)),
        engaged=np.asarray(float(engaged.sum())),
        positives=np.asarray(positives),
        not_interested=np.asarray(not_interested),
        **guardrails,
    )


def _mean_of(total: np.ndarray | None, count: np.ndarray | None, name: str) -> np.ndarray:
    """``total / count`` (0 where the count is 0) of a guardrail's counts."""
    if total is None or count is None:
        raise ValueError(f"the counts hold no {name} (person_counts without it in metrics)")
    return np.asarray(total, np.float64) / np.maximum(np.asarray(count, np.float64), 1.0)


def metric_values(
    counts: PersonCounts, bounds: MetricBounds, metrics: Sequence[str] = METRICS
) -> np.ndarray:
    """Each person's clipped values of ``metrics`` (a
    ``stamen.models.experiments.metric_set``) in their own units, shape ``(..., M)``
    (zero where a person has no impression)."""
    sessions = np.asarray(counts.sessions, np.float64)
    impressions = np.asarray(counts.impressions, np.float64)
    per_impression = np.maximum(impressions, 1.0)
    per_session = np.maximum(sessions, 1.0)
    columns = [
        sessions,
        np.asarray(counts.engaged, np.float64) / per_impression,
        np.asarray(counts.positives, np.float64) / per_session,
        np.asarray(counts.not_interested, np.float64) / per_impression,
    ]
    if "diversity" in metrics:
        columns.append(_mean_of(counts.diversity, counts.lists, "diversity"))
    if "latency" in metrics:
        columns.append(_mean_of(counts.latency_s, counts.timed, "latency"))
    values = np.clip(np.stack(columns, axis=-1), 0.0, bounds.bounds(metrics))
    return np.where((impressions > 0)[..., None], values, 0.0)


def _blocks(
    counts: PersonCounts,
    bounds: MetricBounds,
    pre: PersonCounts | None = None,
    metrics: Sequence[str] = METRICS,
) -> np.ndarray:
    """Each person's own block ``[x, y_1, y_1², …]`` (``x``: exposed), shape
    ``(people, len(statistics(metrics)))``; with ``pre``, the covariate layout
    (``statistics(metrics, covariates=True)``), zero for a person not exposed in the window."""
    scale = bounds.bounds(metrics)
    scaled = metric_values(counts, bounds, metrics) / scale
    exposed = np.asarray(counts.impressions) > 0
    if pre is not None:
        before = metric_values(pre, bounds, metrics) / scale
        if before.shape != scaled.shape:
            raise ValueError(f"pre has {len(before)} people; counts {len(scaled)}")
        before = np.where(exposed[:, None], before, 0.0)
        block = np.empty((len(scaled), len(statistics(metrics, covariates=True))))
        block[:, 0] = exposed
        for j, column in enumerate((scaled, scaled**2, before, before**2, before * scaled)):
            block[:, 1 + j :: 5] = column
        return block
    block = np.empty((len(scaled), len(statistics(metrics))))
    block[:, 0] = exposed
    block[:, 1::2] = scaled
    block[:, 2::2] = scaled**2
    return block


def _checked_arms(arms: np.ndarray, n_arms: int) -> np.ndarray:
    arms = np.asarray(arms, np.int64)
    if arms.ndim != 1 or (len(arms) and (arms.min() < 0 or arms.max() >= n_arms)):
        raise ValueError(f"arms must be a 1-d array of indices in [0, {n_arms})")
    return arms


def contributions(
    arms: np.ndarray,
    counts: PersonCounts,
    *,
    n_arms: int,
    bounds: MetricBounds,
    pre: PersonCounts | None = None,
    metrics: Sequence[str] = METRICS,
) -> np.ndarray:
    """Every person's contribution vector, shape ``(people, n_arms · len(statistics(metrics)))``:
    their block in their arm ``arms[i]``, zeros elsewhere (module docstring); with ``pre``
    (pre-period counts) the blocks of ``statistics(metrics, covariates=True)``."""
    arms = _checked_arms(arms, n_arms)
    blocks = _blocks(counts, bounds, pre, metrics)
    width = blocks.shape[1]
    out = np.zeros((len(arms), n_arms * width))
    columns = arms[:, None] * width + np.arange(width)
    np.put_along_axis(out, columns, blocks, axis=1)
    return out


def summed_contributions(
    arms: np.ndarray,
    counts: PersonCounts,
    *,
    n_arms: int,
    bounds: MetricBounds,
    pre: PersonCounts | None = None,
    metrics: Sequence[str] = METRICS,
) -> np.ndarray:
    """The sum of :func:`contributions` over people, shape
    ``(n_arms, len(statistics(metrics)))`` (the covariate layout with ``pre``), without
    building every vector (what a secure sum of them releases, before noise)."""
    arms = _checked_arms(arms, n_arms)
    blocks = _blocks(counts, bounds, pre, metrics)
    one_hot = (arms[None, :] == np.arange(n_arms)[:, None]).astype(np.float64)
    return one_hot @ blocks


def contribution(
    experiment: Experiment,
    *,
    device_secret: bytes,
    events: Iterable[Event],
    impressions: Sequence[Impression],
    start: float,
    end: float,
    bounds: MetricBounds | None = None,
    pre_start: float | None = None,
    rating_threshold: float | None = RATING_THRESHOLD,
    genres: ItemGenres | None = None,
) -> np.ndarray:
    """The vector this device contributes to ``experiment``'s measurement over
    ``[start, end)``: its own arm's block of the experiment's metrics (its guardrails
    included), assigned by :func:`assign`, zeros elsewhere; L2 norm at most
    :func:`sensitivity` of their number. With ``pre_start``, the pre-period ``[pre_start,
    start)`` gives the covariates (module docstring; norm at most
    ``sensitivity(M, covariates=True)``). A rating counts as positive at or above
    ``rating_threshold`` (the device's own, ``Device.open``); ``genres`` gives the items'
    genres for the diversity guardrail."""
    bounds = bounds or MetricBounds()
    if pre_start is not None and not pre_start < start:
        raise ValueError(f"pre_start must come before start (got {pre_start} >= {start})")

    def one_person(since: float, until: float) -> PersonCounts:
        c = person_counts(
            events,
            impressions,
            start=since,
            end=until,
            bounds=bounds,
            rating_threshold=rating_threshold,
            metrics=experiment.metrics,
            genres=genres,
        )
        return dataclasses.replace(
            c,
            **{
                f: np.atleast_1d(getattr(c, f))
                for f in c.__dataclass_fields__
                if getattr(c, f) is not None
            },
        )

    events = list(events)
    one = one_person(start, end)
    pre = None if pre_start is None else one_person(pre_start, start)
    arm = assign(experiment, device_secret=device_secret)
    vectors = contributions(
        np.array([arm]),
        one,
        n_arms=len(experiment.arms),
        bounds=bounds,
        pre=pre,
        metrics=experiment.metrics,
    )
    return vectors[0]
