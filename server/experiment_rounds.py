"""Measurement rounds of A/B experiments: each one a private sum over every device.

A run measures the experiments its starting release carries (``stamen.models.experiments``:
ids, arm names and metric sets; the devices serve their arms). Every
``analytics.experiments.every`` rounds, between the round's training and its release
(``stamen.server.app.RoundEnd``), each experiment is one
:class:`~stamen.server.analytics.PrivateSum` query: every enrolled device (sampling rate 1)
answers with its contribution over the window (its own arm's block of ``[1, y₁, y₁², …]``
over the experiment's ``M`` metrics, the four and the guardrails it names, each ``y`` clipped
to its bound and scaled to ``[0, 1]``, zeros in the other arms' blocks:
``stamen.client.device.experiments``), clipped and noised like any query and summed under
SecAgg+, so the server sees only the noisy per-arm sums. Each experiment has its own
accountant (its ε is reported per experiment, apart from training's and the other
queries'), its own random streams (the run's seed and the experiment's place in the
release), and its report (``stamen.server.experiment_stats``: each arm's means, every
treatment's effect with an interval that includes the noise's variance, p-values, the
guardrails beside the other metrics) goes into the round's record under
``analytics["experiment:<id>"]``. The request names an experiment's guardrails
(``experiment-guardrails``, comma-separated; absent when it has none), so that a device not
in the experiment answers zeros of the same width. The machinery (a query per key, its
window, accountant, streams and record) is :class:`Measurements`; the off-policy evaluation
of a release's candidate policies is its other kind (``stamen.server.off_policy_rounds``),
asked at the same rounds.

**Covariates** (``analytics.experiments.pre_period_days``). The request then also names the
pre-period's start (``experiment-pre-start``: ``pre_period_days`` before the window's start);
each device sends the covariate layout (``stamen.models.experiments.statistics(metrics,
covariates=True)``: per metric ``[y, y², x, x², x·y]``, ``x`` the metric over the
pre-period), the query's width and so its scale follow that layout (the L2 sensitivity
``sqrt(1 + 5M)`` instead of ``sqrt(1 + 2M)``: more noise per coordinate at the same ε), and
the report carries the CUPED-adjusted figures (``cuped``) beside the unadjusted ones of the
same sums.

**Monitoring** (``analytics.experiments.monitor``). A run plans ``K`` measurements
(``rounds // every``, at most :data:`~stamen.server.experiment_monitoring.MAX_LOOKS`); at
the ``k``-th, every effect's ``z`` is compared with the O'Brien-Fleming-type
group-sequential boundary at spending time ``k / K``, whose correlation between looks
includes the fresh noise of each (``stamen.server.experiment_monitoring``: the noise part
of each look's variance is ``σ² (scale² + mean²) / n²`` per arm). The record's ``monitoring``
gives the look, the boundary and, per effect, ``z``, whether it crossed now and whether it
has crossed at any look so far (a crossing is a decision: it stands). Looking at every
measurement then keeps the false-positive rate at ``α`` (the Monte Carlo:
``benchmarks/experiments_sequential.py``); the plain ``p_value`` of a look does not.
"""

from __future__ import annotations

import dataclasses
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from stamen.models.experiments import METRICS, statistics
from stamen.models.wire import Request, Scalar, Task
from stamen.privacy import Purpose
from stamen.server.analytics import PrivateSum
from stamen.server.experiment_monitoring import group_sequential_bounds, look_correlation
from stamen.server.experiment_stats import experiment_report
from stamen.server.rounds import PrivacySpent, QueryRecord

if TYPE_CHECKING:
    from stamen.server.strategy import FederatedAveraging

__all__ = [
    "QUERY_PREFIX",
    "ExperimentMeasurements",
    "Measurements",
    "privacy_spent",
    "query_name",
]

#: A measurement's name in a round record's ``analytics``: the prefix and the experiment id.
QUERY_PREFIX = "experiment:"


def query_name(experiment: str) -> str:
    """The name of ``experiment``'s measurement query in the round records."""
    return f"{QUERY_PREFIX}{experiment}"


def _noise_variance(sigma: float, scale: float, mean: float | None, n: float | None) -> float:
    """The noise's part of the variance of an arm's mean (``stamen.server.experiment_stats``),
    in the metric's units; NaN where the arm has no estimate (its noisy count is not
    positive: the report holds ``None``)."""
    if mean is None or n is None or n <= 0:
        return math.nan
    return sigma**2 * (scale**2 + mean**2) / n**2


def _seed(run_seed: int, *place: int) -> int:
    """The streams' seed of the measurement at ``place`` (an experiment's place in the
    release; the off-policy evaluation's own key): one per measured query, so no two share
    noise."""
    return int(np.random.SeedSequence([run_seed, 28, *place]).generate_state(1)[0])


class Measurements(ABC):
    """Measurement queries of a run: private sums over every enrolled device, one
    :class:`~stamen.server.analytics.PrivateSum` per key, each with its own accountant and
    random streams, asked every ``analytics.experiments.every`` rounds over the settings'
    window (module docstring). A kind of measurement says what its request asks
    (:meth:`settings`) and what its report is (:meth:`report`): the A/B experiments'
    (:class:`ExperimentMeasurements`) and the candidate policies' off-policy evaluation
    (``stamen.server.off_policy_rounds``).

    Args:
        owner: the run's training strategy (its devices, sampling, settings, history).
        widths: each query's key and the length of a device's vector (every entry in
            ``[0, 1]``; its L2 norm at most the square root of the width, the sensitivity).
        task: what the request asks a device.
        seeds: each query's place for its random streams.
        what: what the queries are, for the error when the population is unknown.
    """

    def __init__(
        self,
        owner: FederatedAveraging,
        widths: Mapping[str, int],
        *,
        task: Task,
        seeds: Mapping[str, tuple[int, ...]],
        what: str,
    ) -> None:
        self.owner = owner
        self.settings = owner.settings.analytics.experiments
        self.task = task
        population = owner._query_population(what)
        releases = max(owner.settings.rounds // max(self.settings.every, 1), 1)
        #: The measurements the run plans (the looks of a monitored experiment).
        self.looks = releases
        self.widths = dict(widths)
        self.queries = {
            key: PrivateSum(
                owner,
                name=self.name(key),
                width=width,
                dp=self.settings.dp,
                population=population,
                cohort=population,
                releases=releases,
                released=owner._asked(self.name(key)),
                secagg=owner.settings.secagg,
                seed=_seed(owner.settings.seed, *seeds[key]),
                purpose=Purpose.EXPERIMENT,
            )
            for key, width in self.widths.items()
        }

    @abstractmethod
    def name(self, key: str) -> str:
        """The query's name in the round records' ``analytics``."""
        ...

    @abstractmethod
    def settings_of(self, key: str, *, start: float) -> dict[str, Scalar]:
        """What the request asks of a device besides the window (starting at ``start``) and
        the metrics' bounds."""
        ...

    @abstractmethod
    def expected(self, key: str) -> int:
        """How many entries the released sum of ``key`` has."""
        ...

    @abstractmethod
    def report(self, key: str, sums: np.ndarray, query: PrivateSum) -> dict[str, Any]:
        """The JSON report of ``key``'s released ``sums`` (noise included)."""
        ...

    def due(self, rnd: int) -> bool:
        """Whether round ``rnd`` measures."""
        every = self.settings.every
        return bool(self.queries) and every > 0 and rnd % every == 0

    def ask(self, key: str, rnd: int) -> PrivateSum:
        """``key``'s query, set up for round ``rnd`` (no model is sent)."""
        query = self.queries[key]
        now = self.settings.now if self.settings.now is not None else time.time()
        start, end = self.settings.window(now)
        bounds = self.settings.bounds
        request = Request(
            task=self.task,
            round=rnd,
            settings={
                **self.settings_of(key, start=start),
                "experiment-start": float(start),
                "experiment-end": float(end),
                **{f"experiment-{k.replace('_', '-')}": v for k, v in bounds.model_dump().items()},
            },
        )
        # no model: one empty array (Flower's messages cannot carry zero arrays)
        query.ask([np.zeros(0, np.float32)], request)
        return query

    def take(self, key: str) -> QueryRecord:
        """The record of ``key``'s measurement just run: its query's part and, when the sum
        was released, the report."""
        query = self.queries[key]
        record = dataclasses.replace(query.record)
        if query.result is not None:
            sums = np.asarray(query.result.total, np.float64)
            if sums.shape != (self.expected(key),):
                record.failed = (
                    f"the sum has {sums.shape} entries, not the {self.expected(key)} expected"
                )
                return record
            record.report = self.report(key, sums, query)
        elif record.skipped is None and record.failed is None:
            record.failed = "SecAgg+ halted without a sum (too few answers)"
        return record


def privacy_spent(query: PrivateSum) -> dict[str, Any]:
    """A released query's privacy for its report: its own accountant's (ε, δ) and
    mechanism, or ε = ∞ without DP."""
    if query.mechanism is None:
        return {"epsilon": float("inf"), "mode": "off"}
    return PrivacySpent.of(query.mechanism).to_json()


class ExperimentMeasurements(Measurements):
    """The measurement queries of a run's experiments (see module docstring).

    Args:
        owner: the run's training strategy (its devices, sampling, settings, history).
        experiments: each experiment's arm names, by id, in the release's order.
        metrics: each experiment's metric set, by id
            (``stamen.models.experiments.experiment_metrics``); an experiment it leaves out
            measures the four metrics.
    """

    def __init__(
        self,
        owner: FederatedAveraging,
        experiments: Mapping[str, tuple[str, ...]],
        metrics: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.arms = dict(experiments)
        #: Each experiment's metrics: the four, then its guardrails.
        self.metrics = {key: tuple((metrics or {}).get(key, METRICS)) for key in self.arms}
        #: Whether the devices send pre-experiment covariates (CUPED), and each block layout.
        self.covariates = owner.settings.analytics.experiments.pre_period_days is not None
        self.layouts = {
            key: statistics(m, covariates=self.covariates) for key, m in self.metrics.items()
        }
        super().__init__(
            owner,
            {experiment: len(self.layouts[experiment]) for experiment in self.arms},
            task=Task.EXPERIMENT,
            seeds={experiment: (place,) for place, experiment in enumerate(self.arms)},
            what="experiment measurements",
        )

    def name(self, key: str) -> str:
        """``experiment:<id>``."""
        return query_name(key)

    def settings_of(self, key: str, *, start: float) -> dict[str, Scalar]:
        """The experiment, its number of arms, its place in the release, its guardrails
        (when it has any) and, with covariates, the start of the pre-period."""
        asked: dict[str, Scalar] = {
            "experiment-id": key,
            "experiment-arms": len(self.arms[key]),
            "experiment-place": list(self.arms).index(key),
        }
        guardrails = self.metrics[key][len(METRICS) :]
        if guardrails:
            asked["experiment-guardrails"] = ",".join(guardrails)
        pre_start = self.settings.pre_start(start)
        if pre_start is not None:
            asked["experiment-pre-start"] = float(pre_start)
        return asked

    def expected(self, key: str) -> int:
        """One block of statistics per arm."""
        return len(self.arms[key]) * len(self.layouts[key])

    def report(self, key: str, sums: np.ndarray, query: PrivateSum) -> dict[str, Any]:
        """Each arm's means, each treatment's effect (``experiment_report``; with covariates
        also CUPED-adjusted) and, with monitoring, this look's boundary."""
        assert query.result is not None
        names, metrics = self.arms[key], self.metrics[key]
        report = experiment_report(
            sums.reshape(len(names), len(self.layouts[key])),
            experiment=key,
            arms=names,
            metrics=metrics,
            scales=self.settings.bounds.bounds(metrics).tolist(),
            noise_std=query.result.noise_std,
            alpha=self.settings.alpha,
            privacy=privacy_spent(query),
            covariates=self.covariates,
        ).to_json()
        if self.settings.monitor:
            report["monitoring"] = self._monitor(key, report)
        return report

    def _earlier(self, experiment: str) -> list[dict[str, Any]]:
        """The monitoring of this experiment's earlier looks in the run's history."""
        name = query_name(experiment)
        found = []
        for h in self.owner.history:
            query = (h.analytics or {}).get(name)
            report = None if query is None else query.report
            if report is not None and "monitoring" in report:
                found.append(report["monitoring"])
        return found

    def _monitor(self, experiment: str, report: dict[str, Any]) -> dict[str, Any]:
        """This look's boundary and every effect's crossing (module docstring)."""
        earlier = self._earlier(experiment)
        look = len(earlier) + 1
        if look > self.looks:
            return {"look": look, "looks": self.looks, "skipped": "beyond the planned looks"}
        metrics = self.metrics[experiment]
        scales = dict(zip(metrics, self.settings.bounds.bounds(metrics).tolist(), strict=True))
        arms = {a["name"]: a for a in report["arms"]}
        control = arms[report["control"]]
        sigma = float(report["noise_std"])
        fractions = [k / self.looks for k in range(1, look + 1)]
        effects = []
        for effect in report["effects"]:
            key = (effect["arm"], effect["metric"])
            before = [
                e for m in earlier for e in m.get("effects", []) if (e["arm"], e["metric"]) == key
            ]
            stderr, scale = effect["stderr"], scales[effect["metric"]]
            noise = sum(
                _noise_variance(sigma, scale, a["means"][effect["metric"]], a["exposed"])
                for a in (control, arms[effect["arm"]])
            )
            entry: dict[str, Any] = {"arm": key[0], "metric": key[1]}
            usable = stderr is not None and stderr > 0 and math.isfinite(noise)
            if usable:
                entry["noise_variance"] = noise
            if not usable or len(before) != look - 1 or any("variance" not in e for e in before):
                entry["crossed"] = False
                entry["stopped"] = any(e.get("stopped") for e in before)
                entry["reason"] = "no variance at this or an earlier look"
                effects.append(entry)
                continue
            variances = [e["variance"] for e in before] + [stderr**2]
            noises = [min(e["noise_variance"], 0.999 * e["variance"]) for e in before]
            noises.append(min(noise, 0.999 * stderr**2))
            correlation = look_correlation(np.array(variances), np.array(noises))
            bound = group_sequential_bounds(
                fractions,
                alpha=float(report["alpha"]),
                correlation=correlation,
                final=look == self.looks,
            )[-1]
            z = effect["effect"] / stderr
            crossed = bool(abs(z) >= bound)
            entry.update(
                variance=stderr**2,
                z=z,
                bound=float(bound),
                crossed=crossed,
                stopped=crossed or any(e.get("stopped") for e in before),
            )
            effects.append(entry)
        return {"look": look, "looks": self.looks, "effects": effects}
