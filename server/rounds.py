"""The round engine's plan, free of Flower: what each round of a run does before any
device computes anything, and after the sum arrives.

One :class:`RoundPlan` per run decides, round by round: whether the privacy budget allows
the round, which devices form its cohort (seeded over stable device ids: Poisson under
user-level DP, as the accountant assumes; fixed size otherwise), whether that cohort is
large enough to run (SecAgg+'s shares, the distributed noise shares), which rounds
evaluate, and how the mean of the updates is released (DP-FedAvg's fixed-denominator
estimate through the run's Gaussian-sum mechanism, ``stamen.privacy.dp.gaussian``).

The Flower strategies (``stamen.server.strategy``) and the batched simulation
(``stamen.simulation.engines.batched``) both follow it, so the two are the same arithmetic.

What a round did is one :class:`RoundRecord` (its cohort, privacy spent, evaluation,
queries, failures, time), whichever engine ran it; ``to_json`` / ``from_json`` are its
form in results files, ``rounds.jsonl`` lines and checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

import numpy as np

from stamen.errors import CheckpointError
from stamen.models.registry import model_class
from stamen.privacy import (
    UNCLIPPED_RANGE,
    GaussianSum,
    Purpose,
    SecAggSettings,
    Streams,
    honest_sum_bound,
    secagg_range_for,
)
from stamen.server.cohorts import sample_cohort

if TYPE_CHECKING:  # annotations only: the settings import the analytics, which record here
    from stamen.server.settings import ServerSettings

__all__ = [
    "Draw",
    "Evaluation",
    "PrivacySpent",
    "QueryRecord",
    "RecordPrivacy",
    "RoundPlan",
    "RoundRecord",
    "Unidentified",
    "check_distributed_range",
    "check_secure_sum",
    "min_poisson_cohort",
    "noise_share_cohort",
    "resolve_secagg",
    "secagg_range",
]

#: Why a round is skipped when the accountant's target ε would be exceeded.
BUDGET_SPENT = "privacy budget (target epsilon) reached"


def noise_share_cohort(settings: ServerSettings) -> int:
    """The smallest cohort a derived SecAgg+ range leaves room for under distributed DP:
    half the expected cohort, at least ``num_shares`` (a Poisson cohort of 64 falls below
    32 with probability about 5e-5; such a round is skipped, and charged)."""
    return max(settings.secagg.num_shares, math.ceil(settings.clients_per_round / 2))


def secagg_range(settings: ServerSettings, noise_multiplier: float | None) -> float:
    """The per-coordinate range honest values need under SecAgg+: without user-level DP
    the model's ``update_range`` (devices do not clip; ``UNCLIPPED_RANGE`` unless the model
    declares one); under DP the clip norm ``C`` (no value of
    an update clipped to L2 norm ``C`` is larger), plus, when the devices add the noise,
    seven standard deviations of the share of the smallest cohort it leaves room for
    (:func:`noise_share_cohort`; ``secagg_range_for``)."""
    dp = settings.dp
    if not dp.enabled:
        return model_class(settings.model).update_range or UNCLIPPED_RANGE
    if dp.noise_on_devices and noise_multiplier:
        return secagg_range_for(
            noise_multiplier=noise_multiplier,
            clip_norm=dp.clip_norm,
            cohort=noise_share_cohort(settings),
        )
    return dp.clip_norm


def resolve_secagg(settings: ServerSettings, noise_multiplier: float | None) -> SecAggSettings:
    """The run's SecAgg+ settings with the clipping range it uses: derived from the clip
    norm when unset (:func:`secagg_range`); an explicit one kept, under DP refused when it
    would clip honest values and warned about when far wider (``SecAggSettings.resolved``)."""
    needed = secagg_range(settings, noise_multiplier)
    if not settings.dp.enabled:
        # no clip norm: nothing needs a range; an explicit one is the user's choice
        if settings.secagg.clipping_range is not None:
            return settings.secagg
        return settings.secagg.resolved(needed)
    why = "the devices' clipped updates"
    if settings.dp.noise_on_devices and noise_multiplier:
        why = "the devices' clipped updates and noise shares"
    if settings.secagg.clipping_range is not None and settings.dp.noise_on_devices:
        check_distributed_range(settings, noise_multiplier or 0.0)
        # an explicit range is checked against the expected cohort (above); the derived
        # one is what to compare its width with
        needed = min(needed, settings.secagg.clipping_range)
    return settings.secagg.resolved(needed, why=why)


def min_poisson_cohort(
    settings: ServerSettings, noise_multiplier: float, *, clipping_range: float | None = None
) -> int:
    """Fewest devices a Poisson cohort may have for its round to run: SecAgg+'s
    ``num_shares``, and under distributed DP enough devices that each one's noise share
    (``z C / sqrt(n)``, so the shares sum to the full noise) stays inside SecAgg+'s
    clipping range (``clipping_range``; ``None``: ``resolve_secagg``'s). Smaller cohorts
    skip the round, which is charged to the accountant all the same."""
    floor = settings.secagg.num_shares if settings.secagg.enabled else 1
    if settings.secagg.enabled and settings.dp.noise_on_devices and noise_multiplier > 0:
        if clipping_range is None:
            clipping_range = resolve_secagg(settings, noise_multiplier).value_range()
        room = clipping_range - settings.dp.clip_norm
        if room <= 0:
            raise ValueError("secagg.clipping_range must exceed dp.clip_norm")
        needed = (7 * noise_multiplier * settings.dp.clip_norm / room) ** 2
        floor = max(floor, math.ceil(needed * (1 - 1e-9)))  # float rounding of a derived room
    return floor


def check_distributed_range(settings: ServerSettings, noise_multiplier: float) -> None:
    """Refuse distributed DP whose noise shares an explicit SecAgg+ clipping range would
    clip (see ``secagg_range_for``); an unset range is derived to fit them."""
    if not (settings.secagg.enabled and settings.dp.noise_on_devices):
        return
    if settings.secagg.clipping_range is None:
        return
    needed = secagg_range_for(
        noise_multiplier=noise_multiplier,
        clip_norm=settings.dp.clip_norm,
        cohort=settings.clients_per_round,
    )
    if settings.secagg.clipping_range < needed:
        raise ValueError(
            f"secagg.clipping_range ({settings.secagg.clipping_range:g}) would clip the "
            f"devices' noise shares (z = {noise_multiplier:.3g}); set it to at least "
            f"{needed:.3g}, or leave it unset to derive it"
        )


def check_secure_sum(
    total: list[np.ndarray],
    *,
    devices: int,
    secagg: SecAggSettings,
    clip_norm: float | None,
    noise_std: float,
    weight_sum: int | None = None,
) -> str | None:
    """Why the unmasked SecAgg+ sum ``total`` of ``devices`` updates cannot be the sum of
    honest ones (``None``: it can). ``weight_sum``, the unmasked weight slot (``None``: not
    known here), must be the ``SecAggSettings.honest_weight_sum`` of ``devices``: a forged
    weight rescales the whole mean. Every honest value is dequantised into ``[-r, r]``
    (``r``: the clipping range), so no coordinate of the sum exceeds ``n r``; under DP its
    norm is at most ``honest_sum_bound`` (``clip_norm`` ``None``: no DP, no norm bound;
    ``noise_std``: each device's noise share). A malicious device may have sent any ring
    element (module docstring of ``stamen.privacy.crypto.secagg``); this check is what
    bounds it."""
    honest_weight = secagg.honest_weight_sum(devices)
    if weight_sum is not None and weight_sum != honest_weight:
        return (
            f"the unmasked weight sum is {weight_sum}, not the {honest_weight} ({devices} "
            f"devices x weight {secagg.honest_weight_sum(1)}) honest devices send: a device "
            "forged its weight"
        )
    if not all(np.all(np.isfinite(a)) for a in total):
        return "the unmasked sum is not finite (a forged weight made the summed weights zero)"
    limit = devices * secagg.value_range()
    largest = max((float(np.abs(a).max()) for a in total if a.size), default=0.0)
    if largest > limit * (1 + 1e-9):
        return (
            f"a coordinate of the unmasked sum is {largest:.6g}, beyond the {limit:.6g} "
            f"({devices} devices x clipping range {secagg.value_range():g}) honest devices "
            "can reach"
        )
    if clip_norm is None:
        return None
    size = sum(int(a.size) for a in total)
    bound = honest_sum_bound(
        devices=devices, size=size, clip_norm=clip_norm, noise_std=noise_std, secagg=secagg
    )
    norm = float(np.sqrt(sum(float((a.astype(np.float64) ** 2).sum()) for a in total)))
    if norm > bound:
        return (
            f"the unmasked sum's L2 norm is {norm:.6g}, beyond the {bound:.6g} {devices} "
            f"honest devices can reach (clip norm {clip_norm:g}, noise share std "
            f"{noise_std:.4g}, quantisation)"
        )
    return None


@dataclass(frozen=True)
class Draw:
    """A round's cohort (sorted device ids), or why the round is skipped."""

    cohort: np.ndarray
    skipped: str | None = None


class RoundPlan:
    """The plan of a run's training rounds (module docstring).

    Args:
        settings: the run's server settings.
        population: devices enrolled (``None``: unknown, only without user-level DP; each
            draw then takes the devices available as the population).
        rounds_done: rounds recorded before this run (a resume): the accountant continues
            from them.
        own_range: the settings' SecAgg+ clipping range is set by the caller for values
            other than clipped updates (private ALS's statistics): used as it is.
    """

    def __init__(
        self,
        settings: ServerSettings,
        *,
        population: int | None,
        rounds_done: int = 0,
        own_range: bool = False,
    ) -> None:
        self.settings = settings
        self.population = population
        self.streams = Streams(settings.seed)
        self.mechanism: GaussianSum | None = None
        self.min_cohort = 1
        noise_multiplier: float | None = None
        if settings.dp.enabled:
            if population is None:
                raise ValueError("differential privacy needs the population size")
            self.mechanism = settings.dp.mechanism(
                population=population,
                cohort=settings.clients_per_round,
                rounds=settings.rounds,
                seed=settings.seed,
                released=rounds_done,
            )
            noise_multiplier = self.mechanism.noise_multiplier
        #: The run's SecAgg+ settings with the clipping range it uses (``resolve_secagg``).
        self.secagg = settings.secagg if own_range else resolve_secagg(settings, noise_multiplier)
        if noise_multiplier is not None and not own_range:
            self.min_cohort = min_poisson_cohort(
                settings, noise_multiplier, clipping_range=self.secagg.value_range()
            )

    def __repr__(self) -> str:
        return f"RoundPlan(rounds={self.settings.rounds}, mechanism={self.mechanism!r})"

    @property
    def expected_cohort(self) -> int:
        """Devices a training round expects: ``clients_per_round``, at most everyone."""
        cohort = self.settings.clients_per_round
        return cohort if self.population is None else min(cohort, self.population)

    def budget_spent(self) -> bool:
        """Whether one more round would exceed the target ε (skip it)."""
        if self.mechanism is None:
            return False
        accountant = self.mechanism.accountant
        return accountant.settings.target_epsilon is not None and accountant.would_exceed(rounds=1)

    def evaluates(self, rnd: int) -> bool:
        """Whether round ``rnd`` ends with federated evaluation: every ``eval_every``
        rounds and the last."""
        settings = self.settings
        if not settings.evaluate:
            return False
        every = settings.eval_every
        return rnd == settings.rounds or (every > 0 and rnd % every == 0)

    def sample(
        self,
        rnd: int,
        n: int,
        *,
        purpose: Purpose,
        poisson: bool,
        available: np.ndarray | None = None,
    ) -> np.ndarray:
        """Round ``rnd``'s seeded sample of ``n`` expected devices for ``purpose`` among
        the ``available`` ids (``None``: all): Poisson at rate ``n / population`` or of
        fixed size ``n``."""
        top = -1 if available is None or not len(available) else int(np.max(available))
        population = max(self.population or 0, top + 1)
        draw = {"rate": min(n / population, 1.0)} if poisson else {"size": n}
        return sample_cohort(
            population,
            seed=self.settings.seed,
            rnd=rnd,
            purpose=purpose,
            available=available,
            **draw,  # type: ignore[arg-type]
        )

    def draw(self, rnd: int, available: np.ndarray | None = None) -> Draw:
        """Round ``rnd``'s training cohort among the ``available`` ids (``None``: the whole
        population): Poisson under DP, where a cohort below :attr:`min_cohort` skips the
        round and is charged all the same."""
        private = self.mechanism is not None
        cohort = self.sample(
            rnd,
            self.settings.clients_per_round,
            purpose=Purpose.TRAINING,
            poisson=private,
            available=available,
        )
        if self.mechanism is not None and len(cohort) < self.min_cohort:
            self.mechanism.skip()
            return Draw(
                cohort,
                skipped=f"Poisson cohort of {len(cohort)} devices, below the "
                f"{self.min_cohort} this round needs (SecAgg+ shares, noise shares)",
            )
        return Draw(cohort)

    def noise_share_std(self, cohort: int) -> float:
        """The noise share each device of a cohort of ``cohort`` adds (0: none)."""
        return 0.0 if self.mechanism is None else self.mechanism.share_std(cohort)

    def release(
        self, mean: list[np.ndarray], *, rnd: int, devices: int, simulated_shares: bool = False
    ) -> list[np.ndarray]:
        """Round ``rnd``'s mean of ``devices`` updates as the server's optimiser receives
        it: unchanged without DP; under DP the mechanism's fixed-denominator release."""
        if self.mechanism is None:
            return mean
        return self.mechanism.release_mean(
            mean,
            rnd=rnd,
            devices=devices,
            expected=self.expected_cohort,
            simulated_shares=simulated_shares,
        )


# --- what a round did -----------------------------------------------------------------

_R = TypeVar("_R")


def _object(obj: object, where: str, keys: Iterable[str]) -> dict[str, Any]:
    """``obj`` as a dict whose keys are all among ``keys``; else a ``CheckpointError``
    naming what is wrong (nothing is silently dropped)."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where}: expected an object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(keys), key=str)
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        raise CheckpointError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {names}")
    return dict(obj)


def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _build(cls: type[_R], values: dict[str, Any], where: str) -> _R:
    try:
        return cls(**values)
    except TypeError as err:  # a required field is missing
        raise CheckpointError(f"{where}: {err}") from err


def _set(record: Any) -> dict[str, Any]:
    """A record's fields that are set (not ``None``), in field order."""
    values = ((f.name, getattr(record, f.name)) for f in fields(record))
    return {name: value for name, value in values if value is not None}


class _FlatRecord:
    """``to_json`` / ``from_json`` of a record whose fields are all JSON values."""

    __slots__ = ()
    json_key: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        """The fields that are set, as a JSON object."""
        return _set(self)

    @classmethod
    def from_json(cls, obj: object, where: str | None = None) -> Self:
        """Read :meth:`to_json`'s object back (``CheckpointError`` on an unknown key)."""
        where = where or cls.json_key
        return _build(cls, _object(obj, where, _names(cls)), where)


def _list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise CheckpointError(f"{where}: expected a list, got {type(value).__name__}")
    return value


@dataclass(slots=True, kw_only=True)
class PrivacySpent(_FlatRecord):
    """The (ε, δ) an accountant has spent so far (``GaussianSum.spent``)."""

    epsilon: float
    delta: float

    @classmethod
    def of(cls, mechanism: GaussianSum) -> PrivacySpent:
        """What ``mechanism``'s accountant has spent."""
        spent = mechanism.spent()
        return cls(epsilon=spent["epsilon"], delta=spent["delta"])

    #: What a checkpoint's error names it.
    json_key: ClassVar[str] = "privacy"


@dataclass(slots=True, kw_only=True)
class RecordPrivacy(_FlatRecord):
    """Record-level DP-SGD so far: ε of the most-sampled device's records and the rounds
    that device took part in."""

    epsilon: float
    max_participations: int

    #: What a checkpoint's error names it.
    json_key: ClassVar[str] = "record_privacy"


@dataclass(slots=True, kw_only=True)
class Unidentified(_FlatRecord):
    """A node left out of a round because it reported no device id, and why."""

    node: str
    reason: str

    #: What a checkpoint's error names it.
    json_key: ClassVar[str] = "unidentified"


@dataclass(slots=True, kw_only=True)
class QueryRecord:
    """A private analytics query's part of a round (``stamen.server.analytics.PrivateSum``):
    its cohort, answers, noise and privacy spent, or why it was skipped or failed."""

    cohort: int | None = None
    skipped: str | None = None
    devices: int | None = None
    failures: int | None = None
    failed: str | None = None
    rejected: list[str] | None = None
    #: Standard deviation of the noise on each decoded entry of the sum.
    noise_std: float | None = None
    privacy: PrivacySpent | None = None
    #: Trending: items whose released count is above zero.
    items_counted: int | None = None
    #: An experiment's measurement: its report (``ExperimentReport.to_json``).
    report: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The set fields as a JSON object."""
        out = _set(self)
        if self.rejected is not None:
            out["rejected"] = list(self.rejected)
        if self.privacy is not None:
            out["privacy"] = self.privacy.to_json()
        return out

    @classmethod
    def from_json(cls, obj: object, where: str = "query") -> QueryRecord:
        """Read :meth:`to_json`'s object back (``CheckpointError`` on an unknown key)."""
        values = _object(obj, where, _names(cls))
        if values.get("rejected") is not None:
            values["rejected"] = list(_list(values["rejected"], f"{where}.rejected"))
        if values.get("privacy") is not None:
            values["privacy"] = PrivacySpent.from_json(values["privacy"], f"{where}.privacy")
        return _build(cls, values, where)


@dataclass(slots=True, kw_only=True)
class Evaluation:
    """A round's federated evaluation: the mean of each metric over the devices, in the
    clear or as a secure sum (then with the sum's query fields and noise)."""

    #: Metric name -> mean over the devices (``ndcg@10``, ``valid_ndcg@10``, ``loss``, …).
    metrics: dict[str, float] = field(default_factory=dict)
    #: Devices measured (a secure sum's noisy count, rounded).
    devices: int | None = None
    #: Whether every device was asked (the round that selection may report).
    full: bool | None = None
    #: A SecAgg+ sum, not devices' metrics in the clear.
    secure: bool | None = None
    #: Devices whose answers the secure sum holds.
    answered: int | None = None
    #: Standard deviation of the noise on each metric's mean.
    metric_noise_std: float | None = None
    cohort: int | None = None
    skipped: str | None = None
    failures: int | None = None
    failed: str | None = None
    rejected: list[str] | None = None
    noise_std: float | None = None
    privacy: PrivacySpent | None = None

    @classmethod
    def of_query(cls, query: QueryRecord, *, secure: bool) -> Evaluation:
        """An evaluation that starts from a query's record (its cohort, answers, noise,
        privacy); the metrics come later."""
        return cls(
            cohort=query.cohort,
            skipped=query.skipped,
            devices=query.devices,
            failures=query.failures,
            failed=query.failed,
            rejected=None if query.rejected is None else list(query.rejected),
            noise_std=query.noise_std,
            privacy=query.privacy,
            secure=secure,
        )

    def to_json(self) -> dict[str, Any]:
        """One flat JSON object: the metrics by name, then the set fields."""
        out: dict[str, Any] = dict(self.metrics)
        for name, value in _set(self).items():
            if name != "metrics":
                out[name] = value
        if self.rejected is not None:
            out["rejected"] = list(self.rejected)
        if self.privacy is not None:
            out["privacy"] = self.privacy.to_json()
        return out

    @classmethod
    def from_json(cls, obj: object, where: str = "evaluate") -> Evaluation:
        """Read :meth:`to_json`'s object back: a key that is not a field is a metric and
        must hold a number (``CheckpointError`` naming it otherwise)."""
        if not isinstance(obj, dict):
            raise CheckpointError(f"{where}: expected an object, got {type(obj).__name__}")
        known = set(_names(cls)) - {"metrics"}
        metrics = {
            k: v
            for k, v in obj.items()
            if k not in known and isinstance(v, int | float) and not isinstance(v, bool)
        }
        values = _object({k: v for k, v in obj.items() if k not in metrics}, where, known)
        if values.get("rejected") is not None:
            values["rejected"] = list(_list(values["rejected"], f"{where}.rejected"))
        if values.get("privacy") is not None:
            values["privacy"] = PrivacySpent.from_json(values["privacy"], f"{where}.privacy")
        return _build(cls, {"metrics": metrics, **values}, where)


@dataclass(slots=True, kw_only=True)
class RoundRecord:
    """What one training round did, whichever engine ran it (the Flower strategies, the
    batched simulation, private ALS). A field is ``None`` where the round has nothing to
    say (a skipped round has no cohort; a round without DP no privacy)."""

    round: int
    #: Why the round did not run (privacy budget spent, too small a Poisson cohort).
    skipped: str | None = None
    #: Private ALS: the round's stage, ``"counts"`` or ``"statistics"``.
    stage: str | None = None
    #: Nodes left out because they reported no device id.
    unidentified: list[Unidentified] | None = None
    #: Devices sampled.
    cohort: int | None = None
    #: Record-level DP-SGD spent so far.
    record_privacy: RecordPrivacy | None = None
    #: User-level (ε, δ) spent so far.
    privacy: PrivacySpent | None = None
    #: Devices' training metrics, averaged (only without SecAgg+ and DP).
    fit: dict[str, float] | None = None
    #: Updates aggregated.
    devices: int | None = None
    #: Devices that failed or whose update was rejected.
    failures: int | None = None
    upload_bytes_per_device: int | None = None
    #: L2 norm of the mean update the server optimiser received.
    update_norm: float | None = None
    failure_reasons: list[str] | None = None
    #: Devices sent a request that never answered, and why that is counted.
    dropouts: int | None = None
    dropout_reason: str | None = None
    #: Why updates were left out of the mean (plain mode's checks).
    rejected: list[str] | None = None
    #: Private ALS baseline: user factors clipped this round.
    clipped_user_factors: int | None = None
    #: The round's private analytics queries by name (``trending``).
    analytics: dict[str, QueryRecord] | None = None
    evaluate: Evaluation | None = None
    evaluate_failures: int | None = None
    evaluate_failure_reasons: list[str] | None = None
    #: How the round aggregated when it differs from the usual (no aggregate arrived).
    aggregation: str | None = None
    #: Why the round failed (the model did not change).
    failed: str | None = None
    #: File name of the release published after the round.
    release: str | None = None
    #: Wall time of the round.
    seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object: the set fields (``None`` ones left out), nested
        parts as objects; results files, ``rounds.jsonl`` and checkpoints hold this."""
        out = _set(self)
        for name in ("failure_reasons", "rejected", "evaluate_failure_reasons"):
            if out.get(name) is not None:
                out[name] = list(out[name])
        if self.fit is not None:
            out["fit"] = dict(self.fit)
        if self.unidentified is not None:
            out["unidentified"] = [u.to_json() for u in self.unidentified]
        if self.record_privacy is not None:
            out["record_privacy"] = self.record_privacy.to_json()
        if self.privacy is not None:
            out["privacy"] = self.privacy.to_json()
        if self.analytics is not None:
            out["analytics"] = {name: q.to_json() for name, q in self.analytics.items()}
        if self.evaluate is not None:
            out["evaluate"] = self.evaluate.to_json()
        return out

    @classmethod
    def from_json(cls, obj: object, where: str = "round record") -> RoundRecord:
        """Read :meth:`to_json`'s object back (also what earlier versions wrote, the same
        keys). Raises ``CheckpointError`` naming an unknown key or a missing ``round``."""
        if isinstance(obj, dict) and "round" in obj:
            where = f"{where} of round {obj['round']}"
        values = _object(obj, where, _names(cls))
        for name in ("failure_reasons", "rejected", "evaluate_failure_reasons"):
            if values.get(name) is not None:
                values[name] = list(_list(values[name], f"{where}.{name}"))
        if values.get("fit") is not None:
            values["fit"] = dict(_object(values["fit"], f"{where}.fit", values["fit"]))
        if values.get("unidentified") is not None:
            values["unidentified"] = [
                Unidentified.from_json(u, f"{where}.unidentified")
                for u in _list(values["unidentified"], f"{where}.unidentified")
            ]
        if values.get("record_privacy") is not None:
            values["record_privacy"] = RecordPrivacy.from_json(
                values["record_privacy"], f"{where}.record_privacy"
            )
        if values.get("privacy") is not None:
            values["privacy"] = PrivacySpent.from_json(values["privacy"], f"{where}.privacy")
        if values.get("analytics") is not None:
            analytics = _object(values["analytics"], f"{where}.analytics", values["analytics"])
            values["analytics"] = {
                name: QueryRecord.from_json(q, f"{where}.analytics.{name}")
                for name, q in analytics.items()
            }
        if values.get("evaluate") is not None:
            values["evaluate"] = Evaluation.from_json(values["evaluate"], f"{where}.evaluate")
        return _build(cls, values, where)
