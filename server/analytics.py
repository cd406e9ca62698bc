"""Private federated analytics on the server: one mechanism, a private sum, used for
trending counts and for secure federated evaluation (``stamen.models.analytics`` says what
a device sends).

A query is run as a Flower training round of its own (:class:`PrivateSum` is the legacy
strategy Flower's fit workflows drive; ``stamen.server.app`` runs it between a round's
training and its release): a cohort is sampled over stable device ids (Poisson under DP,
as the accountant assumes), each device answers with its bounded vector, clipped and, in
distributed mode, with its share of the noise; the vectors are summed under SecAgg+ (the
server receives only the sum) or, in plain mode, checked and summed by the server;
central mode adds the Gaussian noise to the sum. Each query has its own Opacus
accountant, so its (ε, δ) is reported apart from training's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.common import (
    EvaluateIns,
    FitIns,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy
from flwr.server.strategy.aggregate import aggregate
from pydantic import BaseModel, ConfigDict, Field, model_validator

from stamen.models.analytics import query_scale
from stamen.models.experiments import MetricBounds
from stamen.models.wire import DeviceDP, Request
from stamen.privacy import (
    GaussianSum,
    PrivacyAccountant,
    Purpose,
    SecAggSettings,
    UserDP,
    check_update,
)
from stamen.server import flower_types as flower
from stamen.server.rounds import PrivacySpent, QueryRecord, check_secure_sum

if TYPE_CHECKING:
    from stamen.server.strategy import FederatedAveraging

__all__ = [
    "AnalyticsSettings",
    "DEFAULT_CUTOFFS",
    "EVALUATION_METRICS",
    "EvaluationQuerySettings",
    "ExperimentQuerySettings",
    "PrivateSum",
    "SumResult",
    "TrendingSettings",
    "evaluation_metrics",
]

#: The cut-offs of the evaluation protocol unless a run sets others (``[protocol] cutoffs``).
DEFAULT_CUTOFFS = (10, 20)


def evaluation_metrics(cutoffs: Sequence[int] = DEFAULT_CUTOFFS) -> tuple[str, ...]:
    """The metrics a device's held-out evaluation reports at ``cutoffs``
    (``stamen.simulation.protocol.device_evaluation``) but its loss, which is unbounded and
    so has no place in a bounded private sum: HR, NDCG and recall over the catalogue and HR
    and NDCG among the sampled negatives at each cut-off, MRR, and the validation item's
    HR@10, NDCG@10 and sampled HR@10 (which select the round)."""
    full = [f"{name}@{k}" for k in cutoffs for name in ("hr", "ndcg", "recall")]
    sampled = [f"sampled_{name}@{k}" for k in cutoffs for name in ("hr", "ndcg")]
    return (*full, "mrr", *sampled, "valid_hr@10", "valid_ndcg@10", "valid_sampled_hr@10")


#: :func:`evaluation_metrics` at the default cut-offs.
EVALUATION_METRICS = evaluation_metrics()

_DAY = 86_400.0


class TrendingSettings(BaseModel):
    """The trending query: every ``every`` rounds, devices count their items of the last
    ``window_days`` (at most ``cap`` each); the noisy counts go into that round's
    release (and stay in later releases until the next query)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    every: int = Field(0, ge=0, description="rounds between trending queries; 0: none")
    window_days: float = Field(7.0, gt=0, allow_inf_nan=False)
    cap: int = Field(20, ge=1, description="most recent items one device counts")
    now: float | None = Field(
        None,
        description="end of the window, in seconds since the epoch; None: the server's "
        "clock when the query is sent (a simulation of an old data set sets its last time)",
    )
    clients: int | None = Field(
        None, ge=1, description="expected devices per query (None: every device)"
    )
    dp: UserDP = UserDP()

    @property
    def window(self) -> float:
        """The window in seconds."""
        return self.window_days * _DAY


class EvaluationQuerySettings(BaseModel):
    """Federated evaluation as a private sum: ``secure`` (``None``: whenever SecAgg+ is on)
    sends every evaluation round's metrics through SecAgg+ instead of in the clear;
    ``dp`` adds Gaussian noise to the sum (every device is then asked on every evaluation
    round, the sampling rate 1 its accountant assumes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    secure: bool | None = None
    metrics: tuple[str, ...] = EVALUATION_METRICS
    dp: UserDP = UserDP()

    @model_validator(mode="after")
    def _check(self) -> EvaluationQuerySettings:
        if not self.metrics or len(set(self.metrics)) != len(self.metrics):
            raise ValueError(f"evaluation metrics must be distinct and not empty: {self.metrics}")
        if any("," in name for name in self.metrics):
            raise ValueError("metric names may not contain ','")
        if self.dp.enabled and self.secure is False:
            raise ValueError("evaluation DP is applied to the secure sum: set secure or unset dp")
        return self


class ExperimentQuerySettings(BaseModel):
    """Measurement rounds of the A/B experiments the starting release carries
    (``stamen.server.experiment_rounds``): every ``every`` rounds each experiment is
    measured over the window ``[start, now)`` (``start`` ``None``: ``window_days`` before
    ``now``) by a secure sum of every device's clipped contribution, with ``dp``'s noise
    and an accountant per experiment; ``bounds`` are the per-person clip bounds, ``alpha``
    the reports' level; ``pre_period_days`` asks for pre-experiment covariates (CUPED) over
    ``[start - pre_period_days, start)``. The off-policy evaluation of the release's
    candidate policies (``stamen.server.off_policy_rounds``) is measured with them, over the
    same window, with ``off_policy_max_slots`` and ``bounds.attribution_s``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    every: int = Field(0, ge=0, description="rounds between measurements; 0: none")
    window_days: float = Field(7.0, gt=0, allow_inf_nan=False)
    start: float | None = Field(
        None, description="start of the window, in seconds since the epoch (None: window-days)"
    )
    now: float | None = Field(
        None, description="end of the window (None: the server's clock when it is asked)"
    )
    alpha: float = Field(0.05, gt=0, lt=1)
    monitor: bool = Field(
        False,
        description="sequential monitoring: a group-sequential boundary at every "
        "measurement of the run (at most 20 planned), so that looking each time keeps alpha",
    )
    bounds: MetricBounds = MetricBounds()
    pre_period_days: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="CUPED: devices also measure each metric over the pre-period "
        "[start - pre-period-days, start) as a covariate (None: no covariates); needs start",
    )
    off_policy_max_slots: int = Field(
        50,
        ge=1,
        description="off-policy evaluation of the release's candidate policies: the most "
        "logged slots one person counts as (stamen.client.device.off_policy)",
    )
    dp: UserDP = UserDP()

    @model_validator(mode="after")
    def _pre_period(self) -> ExperimentQuerySettings:
        if self.pre_period_days is not None and self.start is None:
            raise ValueError(
                "pre_period_days needs start (the experiment's start): a pre-period that "
                "moves with the window would overlap the experiment"
            )
        return self

    def pre_start(self, start: float) -> float | None:
        """The start of the pre-period before a window starting at ``start`` (``None``:
        no covariates)."""
        return None if self.pre_period_days is None else start - self.pre_period_days * _DAY

    def window(self, now: float) -> tuple[float, float]:
        """The measurement window ending at ``now``."""
        start = now - self.window_days * _DAY if self.start is None else self.start
        if not start < now:
            raise ValueError(f"the experiment window starts ({start}) after it ends ({now})")
        return start, now


class AnalyticsSettings(BaseModel):
    """Private federated analytics of a run (trending counts, secure evaluation, A/B
    experiments' measurements)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    trending: TrendingSettings = TrendingSettings()
    evaluation: EvaluationQuerySettings = EvaluationQuerySettings()
    experiments: ExperimentQuerySettings = ExperimentQuerySettings()


@dataclass(frozen=True)
class SumResult:
    """A decoded private sum: ``total`` (the noisy sum, in the query's units), how many
    devices answered, and the standard deviation of the noise on each entry."""

    total: np.ndarray
    devices: int
    noise_std: float


class PrivateSum(Strategy):
    """One kind of private sum query (module docstring), asked with :meth:`ask` and run
    by a Flower fit workflow (SecAgg+ when ``secagg`` is given, plain otherwise).

    Args:
        owner: the training strategy (devices, sampling, signatures); ``None`` for a
            sum computed outside Flower (a benchmark calls :meth:`release` directly).
        name: the query (``stamen.models.analytics.QUERIES``).
        width: how many entries of a device's vector may be non-zero (each in [0, 1]).
        dp: its user-level DP (``off``: the sum is exact; SecAgg+ still hides each
            device's vector).
        population: devices enrolled (sampling rate and default δ).
        cohort: expected devices per query (``population``: every device).
        releases: how many times the run asks this query (the noise is calibrated for
            them when ``dp`` gives a target ε).
        released: queries answered before a resume (the accountant continues there).
        secagg: the run's SecAgg+ settings, or ``None`` for plain aggregation.
        seed: the run's seed (central noise).
        purpose: separates this query's cohorts from training's and the other queries'.
    """

    def __init__(
        self,
        owner: FederatedAveraging | None,
        *,
        name: str,
        width: int,
        dp: UserDP,
        population: int,
        cohort: int,
        releases: int,
        released: int = 0,
        secagg: SecAggSettings | None,
        seed: int,
        purpose: Purpose,
    ) -> None:
        super().__init__()
        self.owner = owner
        self.name = name
        self.width = width
        self.dp = dp
        self.population = population
        self.cohort = min(cohort, population)
        self.purpose = purpose
        self.scale = query_scale(width=width, clip_norm=dp.clip_norm)
        #: The query's Gaussian-sum mechanism (``None`` without DP: the sum is exact).
        self.mechanism: GaussianSum | None = None
        if dp.enabled:
            self.mechanism = dp.mechanism(
                population=population,
                cohort=self.cohort,
                rounds=releases,
                seed=seed,
                purpose=purpose,
                released=released,
            )
        self.secagg = None if secagg is None else self._secagg(secagg)
        self._ask: tuple[Parameters, Request] | None = None
        self._share = 0.0  # the noise share each device of the current cohort adds
        self.result: SumResult | None = None
        #: This round's part of the query (the round record's ``analytics`` or ``evaluate``).
        self.record = QueryRecord()
        #: The summed weights SecAgg+ unmasked (``stamen.server.app.WeighingSecAggPlusWorkflow``).
        self.unmasked_weight_sum: int | None = None

    def __repr__(self) -> str:
        return f"PrivateSum({self.name!r}, width={self.width})"

    @property
    def accountant(self) -> PrivacyAccountant | None:
        """The query's own accountant (``None`` without DP)."""
        return None if self.mechanism is None else self.mechanism.accountant

    @property
    def noise_multiplier(self) -> float:
        """z of the query's noise (0 without DP)."""
        return 0.0 if self.mechanism is None else self.mechanism.noise_multiplier

    @property
    def _min_cohort(self) -> int:
        return self.secagg.num_shares if self.secagg is not None else 1

    def _secagg(self, secagg: SecAggSettings) -> SecAggSettings:
        """The run's SecAgg+ settings with a clipping range that covers a scaled entry
        (at most ``clip_norm``) plus seven standard deviations of the largest noise share
        (a cohort of ``num_shares``): that range when the run's is unset or narrower."""
        share = 0.0 if self.mechanism is None else self.mechanism.share_std(secagg.num_shares)
        needed = self.dp.clip_norm + 7 * share
        if secagg.clipping_range is not None and secagg.clipping_range >= needed:
            return secagg
        return secagg.model_copy(update={"clipping_range": needed})

    def ask(self, parameters: list[np.ndarray], request: Request) -> None:
        """Set the arrays sent (the global model, or none) and the query's request (its
        task, round and settings) for the next run of a workflow."""
        self._ask = (ndarrays_to_parameters(parameters), request)
        self.result = None
        self.record = QueryRecord()

    def report(self) -> dict[str, Any] | None:
        """The query's (ε, δ) and mechanism (``None`` without DP)."""
        return None if self.mechanism is None else self.mechanism.report()

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """Not used: a query is run on an initialised run."""
        return None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """The query's cohort (Poisson at ``cohort / population`` under DP; every device,
        or a seeded fixed-size sample, without) and what each device is asked."""
        if self._ask is None:
            raise RuntimeError(f"{self!r}: run without ask()")
        sent, request = self._ask
        rnd = request.round
        if self.owner is None:
            raise RuntimeError(f"{self!r}: no training strategy to sample devices from")
        devices = self.owner.connected_devices(client_manager)
        private = self.mechanism is not None
        cohort = self.owner.sample(devices, self.cohort, rnd, purpose=self.purpose, poisson=private)
        self.record.cohort = len(cohort)
        if len(cohort) < self._min_cohort:
            if self.mechanism is not None:
                self.mechanism.skip()  # charged although skipped: the draw is not data-free
            self.record.skipped = (
                f"cohort of {len(cohort)} devices, below the {self._min_cohort} SecAgg+ needs"
            )
            self._report_privacy()
            return []
        share = 0.0 if self.mechanism is None else self.mechanism.share_std(len(cohort))
        self._share = share
        request = request.with_(
            settings={**request.settings, "analytics-scale": self.scale},
            dp=DeviceDP(self.dp.clip_norm, share),
        )
        fit_ins = FitIns(sent, self.owner.sign(request, sent).to_config())
        return [(client, fit_ins) for client in cohort]

    def aggregate_fit(
        self, server_round: int, results: flower.FitResults, failures: flower.FitFailures
    ) -> flower.AggregatedFit:
        """Sum the answers (under SecAgg+ the one result is their mean), add central
        noise, charge the accountant, decode. Returns no parameters: the global model is
        not touched."""
        assert self._ask is not None
        rnd = self._ask[1].round
        self.record.devices = len(results)
        self.record.failures = len(failures)
        if not results:
            self.record.failed = "no device answered"
            return None, {}
        if self.owner is not None:
            results = self.owner.in_device_order(results)
        answers = [(parameters_to_ndarrays(r.parameters), r.num_examples) for _, r in results]
        if self.secagg is not None:
            total = np.asarray(aggregate(answers)[0], np.float64) * len(results)
            weight_sum, self.unmasked_weight_sum = self.unmasked_weight_sum, None
            refused = check_secure_sum(
                [total],
                devices=len(results),
                weight_sum=weight_sum,
                secagg=self.secagg,
                clip_norm=self.dp.clip_norm,  # every answer is clipped to it (DeviceDP)
                noise_std=self._share,
            )
            if refused is not None:  # a modified device's answer: nothing is released
                if self.mechanism is not None:
                    self.mechanism.skip()
                self._report_privacy()
                self.record.failed = f"refused: {refused}"
                return None, {}
        else:
            kept = []
            for arrays, _ in answers:
                try:
                    check_update(
                        arrays,
                        expected_shapes=[arrays[0].shape] if arrays else [(0,)],
                        bound=self._plain_bound(),
                    )
                except ValueError as error:
                    if self.record.rejected is None:
                        self.record.rejected = []
                    self.record.rejected.append(str(error))
                    continue
                kept.append(np.asarray(arrays[0], np.float64))
            if not kept or len({a.shape for a in kept}) != 1:
                self.record.failed = "no usable answers (rejected or of differing shapes)"
                return None, {}
            total = np.sum(kept, axis=0)
        self.result = self.release(total, rnd=rnd, devices=len(results))
        return None, {}

    def release(self, total: np.ndarray, *, rnd: int, devices: int) -> SumResult:
        """Release the sum ``total`` of ``devices`` scaled answers of round ``rnd``: add
        the central noise (central mode; in distributed mode the devices' shares are in
        it already), charge the accountant, divide by the scale."""
        sigma = 0.0 if self.mechanism is None else self.mechanism.sigma
        if self.mechanism is not None:
            total = self.mechanism.release_sum(total, rnd=rnd)
        self._report_privacy()
        self.record.noise_std = sigma / self.scale
        return SumResult(total / self.scale, devices, sigma / self.scale)

    def _plain_bound(self) -> float:
        """The norm a plain answer may have: the clip norm, unless the device added its
        own noise share (then only shape and finiteness are checked)."""
        if self.mechanism is None:
            return self.dp.clip_norm * (1 + 1e-4)
        return self.mechanism.plain_bound()

    def _report_privacy(self) -> None:
        if self.mechanism is not None:
            self.record.privacy = PrivacySpent.of(self.mechanism)

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """A query has no evaluation stage."""
        return []

    def aggregate_evaluate(
        self, server_round: int, results: flower.EvaluateResults, failures: flower.EvaluateFailures
    ) -> flower.AggregatedEvaluate:
        """A query has no evaluation stage."""
        return None, {}

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        """No server-side evaluation."""
        return None
