"""The server strategy of federated training, on Flower's legacy strategy API (the stack
Flower's ``SecAggPlusWorkflow`` drives in flwr 1.41). It is model-agnostic: it averages
the shared arrays of whichever registered model the settings name.

Each round: sample a seeded cohort over stable device ids (``stamen.server.cohorts``;
Poisson under user-level DP), send the global shared arrays with the model's name and
settings, average the devices' dense updates (under SecAgg+ the server only ever
receives the average), apply the server optimiser (FedAvg / FedAdam). Then, in Flower's
evaluate stage (``stamen.server.app.RoundEnd``): the round's private analytics queries
(trending counts, ``stamen.server.analytics``), federated evaluation (devices rank their
own held-out item; a secure sum of their metrics under SecAgg+, their metrics averaged in
the clear otherwise), and the round's close (:meth:`FederatedAveraging.finish_round`:
record, signed release, checkpoint).

A node's device id comes from :attr:`FederatedAveraging.identify` where it is set (a
deployment with a device registry: the id its authenticated key is registered under,
``stamen.server.identities``); otherwise the device names itself by answering
``get_properties`` with :data:`DEVICE_ID_KEY` (self-declared). Each connected node is
identified once. An id outside ``[0, population)`` (``[0, MAX_DEVICE_ID)`` without a
population), no id, or an id two nodes hold leaves those nodes out of the round, recorded
under ``unidentified`` with the reason.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from flwr.common import (
    Code,
    EvaluateIns,
    FitIns,
    FitRes,
    GetPropertiesIns,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy
from flwr.server.strategy.aggregate import aggregate

from stamen.models.analytics import EVALUATION, TRENDING
from stamen.models.mf.settings import DEVICE_ID_KEY
from stamen.models.wire import DeviceDP, Request, Task
from stamen.privacy import PrivacyAccountant, Purpose, check_update, sign_arrays
from stamen.server import flower_types as flower
from stamen.server.analytics import PrivateSum
from stamen.server.checkpoint import Checkpoint, CheckpointStore
from stamen.server.experiment_rounds import ExperimentMeasurements, Measurements
from stamen.server.off_policy_rounds import OffPolicyEvaluation
from stamen.server.optimizer import ServerOptimizer
from stamen.server.releases import ReleaseWriter
from stamen.server.rounds import (
    BUDGET_SPENT,
    Evaluation,
    PrivacySpent,
    QueryRecord,
    RecordPrivacy,
    RoundPlan,
    RoundRecord,
    Unidentified,
    check_secure_sum,
)
from stamen.server.settings import ServerSettings

#: Bytes per value of a SecAgg+ masked vector (Flower's secaggplus_mod sends int64).
MASKED_VALUE_BYTES = 8
#: Device ids are below this when the population is not given (below the population when
#: it is): a Poisson cohort's draw takes time in proportion to the largest id.
MAX_DEVICE_ID = 10_000_000

#: Seconds a round keeps asking a node that failed to report its device id.
ID_RETRY_S = 10.0

__all__ = [
    "MAX_DEVICE_ID",
    "FederatedAveraging",
    "Identify",
    "RoundCallback",
    "distinct_failures",
    "failure_reasons",
]

_log = logging.getLogger("stamen")

#: Called with each finished round's record.
RoundCallback = Callable[[RoundRecord], None]
#: Device ids of the nodes named (Flower node ids, as ``ClientProxy.cid``): each a device
#: id, or why the node has none.
Identify = Callable[[list[str]], list[int | str]]


def failure_reasons(failures: list[tuple[ClientProxy, Any] | BaseException]) -> list[str]:
    """Why each failed device failed: the exception, or the status of a reply not OK."""
    return [
        f"{type(f).__name__}: {f}" if isinstance(f, BaseException) else str(f[1].status.message)
        for f in failures
    ]


def distinct_failures(
    failures: list[tuple[ClientProxy, Any] | BaseException],
) -> list[tuple[ClientProxy, Any] | BaseException]:
    """``failures`` with each device's error reply once. Flower 1.42's SecAgg+ collect
    stage wraps every error reply in two exceptions (``SecAggPlusWorkflow.collect_masked_
    vectors_stage`` appends ``Exception(msg.error)`` in each of its two loops over the
    replies); both wrap the one ``Error`` object, by which they are told apart."""
    seen: set[int] = set()
    kept: list[tuple[ClientProxy, Any] | BaseException] = []
    for failure in failures:
        wrapped = failure.args[0] if isinstance(failure, BaseException) and failure.args else None
        if wrapped is not None and not isinstance(wrapped, str | int | float):
            if id(wrapped) in seen:
                continue
            seen.add(id(wrapped))
        kept.append(failure)
    return kept


def _mean_metrics(pairs: list[tuple[int, dict[str, Scalar]]]) -> dict[str, float]:
    total = sum(n for n, _ in pairs)
    if total == 0:
        return {}
    names = sorted({k for _, m in pairs for k in m})
    return {k: float(sum(n * float(m[k]) for n, m in pairs if k in m) / total) for k in names}


class FederatedAveraging(Strategy):
    """FedAvg / FedAdam over dense updates of the shared arrays of any registered model.

    Args:
        settings: the run's server settings.
        initial: initial shared arrays (used when not resuming).
        checkpoints: where to write a checkpoint after every round (``None``: nowhere).
        resume: a checkpoint to continue from; its round becomes round 0 of this run.
        fingerprint: what a checkpoint must match to be resumed (model shape, optimiser).
        on_round: called with each finished round's record (progress bars, logs).
        population: number of devices (needed for differential privacy's sampling rate
            and default delta). Each round first waits up to ``connect_timeout`` for this
            many devices to connect (without it, for ``clients_per_round``), so a seeded
            cohort is drawn from the whole population, not from the devices that happened
            to connect first.
        release_key: raw Ed25519 private key; every global model sent to devices is then
            signed (``release-signature`` in the config) and devices verify it before use.
        releases: where to publish a signed release bundle after every round (``None``:
            nowhere); release ``release_offset + N`` is the global model after round ``N``.
            A failed round publishes nothing.
        release_offset: the number of the release this run started from (after a resume:
            the run's first), so that every release of the run is newer than it.
    """

    #: What evaluation rounds ask the devices to evaluate.
    evaluates = Task.MODEL
    #: Whether the settings' SecAgg+ clipping range is the strategy's own, not derived from
    #: the clip norm (``RoundPlan``'s ``own_range``).
    own_secagg_range = False

    def __init__(
        self,
        settings: ServerSettings,
        *,
        initial: list[np.ndarray],
        checkpoints: CheckpointStore | None = None,
        resume: Checkpoint | None = None,
        fingerprint: dict[str, Any] | None = None,
        on_round: RoundCallback | None = None,
        population: int | None = None,
        release_key: bytes | None = None,
        releases: ReleaseWriter | None = None,
        release_offset: int = 0,
    ) -> None:
        super().__init__()
        self.releases = releases
        self.release_offset = release_offset
        self.settings = settings
        self.checkpoints = checkpoints
        #: The round engine's plan: budget, cohorts, evaluation schedule, DP release.
        self.plan = RoundPlan(
            settings,
            population=population,
            rounds_done=0 if resume is None else resume.round,
            own_range=self.own_secagg_range,
        )
        self.fingerprint = dict(fingerprint or {})
        if self.plan.mechanism is not None:
            # the accountant resumes by counting rounds: only under the same mechanism
            dp = self.plan.mechanism.accountant.settings
            self.fingerprint["dp"] = {
                "mode": self.plan.mechanism.mode,
                "noise_multiplier": round(float(dp.noise_multiplier), 12),
                "sampling_rate": round(float(dp.sampling_rate), 12),
                "clip_norm": float(dp.clip_norm),
            }
        self.on_round = on_round
        self.server = ServerOptimizer(initial, settings.optimizer)
        self.history: list[RoundRecord] = []
        self.start_round = 0
        if resume is not None:
            CheckpointStore.check_fingerprint(resume, self.fingerprint)
            self.server.load_state_dict(resume.server_state)
            self.history = list(resume.history)
            self.start_round = resume.round
        self._record = RoundRecord(round=self.start_round)
        #: The summed weights of the last SecAgg+ round, as its workflow unmasked them
        #: (``stamen.server.app.WeighingSecAggPlusWorkflow``; ``None``: not recorded).
        self.unmasked_weight_sum: int | None = None
        self._started = 0.0
        self.release_key = release_key
        self.population = population
        self._device_ids: dict[str, int] = {}
        #: How nodes' device ids are learned (``None``: each node is asked, and its answer
        #: is self-declared; a deployment with a device registry sets its
        #: ``stamen.server.identities.KeyIdentities``).
        self.identify: Identify | None = None
        self._eval_full = True
        #: The latest noisy trending counts (``None`` until the first trending query, or
        #: the counts of the release a deployment starts from).
        self.trending: np.ndarray | None = None
        #: The ranker every release of this run carries unchanged (a deployment keeps the
        #: one of the release it starts from; ``None``: none).
        self.carried_ranker: list[np.ndarray] | None = None
        self.trending_query = self._trending_query()
        self.evaluation_query = self._evaluation_query()
        #: The measurements of the experiments the run's release carries (``None``: none;
        #: set by :meth:`measure_experiments`).
        self.experiments: ExperimentMeasurements | None = None
        #: The off-policy evaluation of the candidate policies the run's release carries
        #: (``None``: none; set by :meth:`evaluate_candidates`).
        self.off_policy: OffPolicyEvaluation | None = None
        # Record-level DP: rounds each device (by Flower node / cid) was sampled for. After a
        # resume, the earlier rounds' largest count is carried as a conservative offset.
        self.participations: Counter[str] = Counter()
        self._participations_before = max(
            (
                h.record_privacy.max_participations
                for h in self.history
                if h.record_privacy is not None
            ),
            default=0,
        )

    @property
    def accountant(self) -> PrivacyAccountant | None:
        """The accountant of the run's user-level DP (``None`` without)."""
        return None if self.plan.mechanism is None else self.plan.mechanism.accountant

    def _query_population(self, what: str) -> int:
        if self.population is None:
            raise ValueError(f"{what} needs the population size")
        return self.population

    def _asked(self, name: str) -> int:
        """Times query ``name`` was asked in the rounds of a resumed history."""
        if name == EVALUATION:
            return sum(1 for h in self.history if h.evaluate is not None and h.evaluate.secure)
        return sum(1 for h in self.history if name in (h.analytics or {}))

    def measure_experiments(
        self,
        experiments: Mapping[str, tuple[str, ...]],
        metrics: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        """Measure ``experiments`` (arm names by id: the starting release's) on their
        ``metrics`` (metric sets by id; default: the four metrics) every
        ``analytics.experiments.every`` rounds (``stamen.server.experiment_rounds``)."""
        self.experiments = (
            ExperimentMeasurements(self, experiments, metrics) if experiments else None
        )

    def evaluate_candidates(self, candidates: Mapping[str, float]) -> None:
        """Evaluate ``candidates`` (weight clips by name: the starting release's candidate
        policies) off-policy at every experiment measurement
        (``stamen.server.off_policy_rounds``)."""
        self.off_policy = OffPolicyEvaluation(self, candidates) if candidates else None

    def measurements(self) -> list[Measurements]:
        """The run's measurement queries, in the order a measuring round asks them: each
        experiment's, then the off-policy evaluation."""
        return [m for m in (self.experiments, self.off_policy) if m is not None]

    def record_query(self, name: str, record: QueryRecord) -> None:
        """Put query ``name``'s record into the current round's ``analytics``."""
        if self._record.analytics is None:
            self._record.analytics = {}
        self._record.analytics[name] = record

    def _trending_query(self) -> PrivateSum | None:
        trending = self.settings.analytics.trending
        if not trending.every:
            return None
        population = self._query_population("trending")
        return PrivateSum(
            self,
            name=TRENDING,
            width=trending.cap,
            dp=trending.dp,
            population=population,
            cohort=trending.clients or population,
            releases=max(self.settings.rounds // trending.every, 1),
            released=self._asked(TRENDING),
            secagg=self.settings.secagg,
            seed=self.settings.seed,
            purpose=Purpose.TRENDING,
        )

    def _evaluation_query(self) -> PrivateSum | None:
        settings = self.settings
        if not (settings.evaluate and settings.secure_evaluation):
            return None
        evaluation = settings.analytics.evaluation
        population = self._query_population("secure evaluation")
        releases = sum(1 for r in range(1, settings.rounds + 1) if self.plan.evaluates(r))
        return PrivateSum(
            self,
            name=EVALUATION,
            width=len(evaluation.metrics) + 1,
            dp=evaluation.dp,
            population=population,
            cohort=population,
            releases=max(releases, 1),
            released=self._asked(EVALUATION),
            secagg=settings.secagg,
            seed=settings.seed,
            purpose=Purpose.EVALUATION,  # without DP: the very devices the clear path would ask
        )

    def trending_due(self, rnd: int) -> bool:
        """Whether round ``rnd`` asks the trending query."""
        every = self.settings.analytics.trending.every
        return self.trending_query is not None and rnd % every == 0

    def ask_trending(self, rnd: int) -> PrivateSum:
        """The trending query, set up for round ``rnd`` (no model is sent)."""
        assert self.trending_query is not None
        trending = self.settings.analytics.trending
        now = trending.now if trending.now is not None else time.time()
        request = Request(
            task=Task.TRENDING,
            round=rnd,
            settings={
                "analytics-now": float(now),
                "analytics-window": trending.window,
                "analytics-cap": trending.cap,
            },
        )
        # no model: one empty array (Flower's messages cannot carry zero arrays)
        self.trending_query.ask([np.zeros(0, np.float32)], request)
        return self.trending_query

    def take_trending(self, rnd: int) -> None:
        """Record round ``rnd``'s trending query; its noisy counts (negative ones read as
        0, which is post-processing) go into this round's release and the later ones."""
        query = self.trending_query
        assert query is not None
        record = dataclasses.replace(query.record)
        if query.result is not None:
            self.trending = np.maximum(query.result.total, 0.0).astype(np.float32)
            record.items_counted = int(np.count_nonzero(self.trending))
        elif record.skipped is None and record.failed is None:
            record.failed = "SecAgg+ halted without a sum (too few answers)"
        self.record_query(TRENDING, record)

    def secure_evaluates(self, rnd: int) -> bool:
        """Whether round ``rnd``'s evaluation is a secure sum rather than in the clear."""
        return self.evaluation_query is not None and self.plan.evaluates(rnd)

    def ask_evaluation(self, rnd: int, parameters: Parameters, connected: int) -> PrivateSum:
        """The secure evaluation query of round ``rnd`` over the global model."""
        assert self.evaluation_query is not None
        query = self.evaluation_query
        arrays = parameters_to_ndarrays(parameters)
        evaluated = self.request(rnd)
        metrics = ",".join(self.settings.analytics.evaluation.metrics)
        request = evaluated.with_(
            task=Task.EVALUATION_SUM,
            evaluates=self.evaluates,
            settings={**evaluated.settings, "analytics-metrics": metrics},
            dp=None,  # the query's own DP, not training's
        )
        query.ask(arrays, request)
        if query.accountant is None:
            query.cohort = self._eval_cohort(rnd, connected)
            self._eval_full = query.cohort >= connected
        return query

    def take_evaluation(self, rnd: int) -> None:
        """Record round ``rnd``'s secure evaluation: the mean of each metric over the
        devices that hold held-out items (the sum's first entry counts them)."""
        query = self.evaluation_query
        assert query is not None
        record = Evaluation.of_query(query.record, secure=True)
        record.full = self._eval_full if query.accountant is None else True
        if query.result is not None:
            count, *sums = query.result.total.tolist()
            names = self.settings.analytics.evaluation.metrics
            record.devices = int(round(count))
            record.answered = query.result.devices
            if record.devices > 0:  # else no device had anything to measure: no means
                denominator = max(count, 1.0)
                means = zip(names, (value / denominator for value in sums), strict=True)
                record.metrics = dict(means)
                record.metric_noise_std = query.result.noise_std / denominator
        elif record.failed is None:
            record.failed = "SecAgg+ halted without a sum (too few answers)"
        self._record.evaluate = record

    @property
    def remaining_rounds(self) -> int:
        """Rounds left to reach ``settings.rounds`` (after a resume, fewer than all)."""
        return max(self.settings.rounds - self.start_round, 0)

    def _global_round(self, server_round: int) -> int:
        return self.start_round + server_round

    def __repr__(self) -> str:
        return f"FederatedAveraging(optimizer={self.settings.optimizer.name})"

    def _await_devices(self, client_manager: ClientManager) -> None:
        """Wait until the population (or a cohort) is connected.

        Raises:
            RuntimeError: fewer than ``clients_per_round`` connected within the timeout.
        """
        cohort = self.settings.clients_per_round
        needed = self.population or cohort
        deadline = time.monotonic() + self.settings.connect_timeout
        while (available := client_manager.num_available()) < needed:
            if time.monotonic() >= deadline:
                if available < cohort:
                    raise RuntimeError(
                        f"only {available} devices connected within "
                        f"{self.settings.connect_timeout:g} s; a round needs {cohort}"
                    )
                _log.warning(
                    "%d of %d devices connected within %g s; sampling from those",
                    available,
                    needed,
                    self.settings.connect_timeout,
                )
                break
            time.sleep(0.05)

    def connected_devices(self, client_manager: ClientManager) -> dict[int, ClientProxy]:
        """Connected devices by device id (each node identified once, then remembered).

        A node asked for its self-declared id whose answer fails (an error reply: its
        ClientApp raised, the SuperLink found it unavailable, …) is asked again, with
        growing pauses, for up to ``ID_RETRY_S`` seconds (at most ``connect_timeout``); one
        that still fails, or that :attr:`identify` gives no id, is left out of this round,
        logged and recorded under ``unidentified``, and identified again in the next round."""
        self._await_devices(client_manager)
        deadline = time.monotonic() + min(ID_RETRY_S, self.settings.connect_timeout)
        pause = 0.25
        while True:
            connected = client_manager.all()
            missing = [p for cid, p in connected.items() if cid not in self._device_ids]
            failed: dict[str, str] = {}
            for proxy, answer in zip(missing, self._identify(missing), strict=True):
                if isinstance(answer, int):
                    self._device_ids[proxy.cid] = answer
                else:
                    failed[proxy.cid] = answer
            left = deadline - time.monotonic()
            if not failed or left <= 0 or self.identify is not None:  # a registry is final
                break
            _log.warning(
                "%d node(s) did not report a device id (%s); asking again",
                len(failed),
                "; ".join(sorted(set(failed.values()))),
            )
            time.sleep(min(pause, left))
            pause *= 2
        claimed: dict[int, list[str]] = {}
        for cid in connected:
            if cid in self._device_ids:
                claimed.setdefault(self._device_ids[cid], []).append(cid)
        for device_id, cids in claimed.items():
            if len(cids) > 1:  # no one may answer for another: all of them stay out
                for cid in cids:
                    failed[cid] = f"device id {device_id} claimed by {len(cids)} nodes"
        if failed:
            _log.warning(
                "%d node(s) left out of round %s without a device id: %s",
                len(failed),
                self._record.round,
                "; ".join(f"node {cid}: {why}" for cid, why in sorted(failed.items())),
            )
            self._record.unidentified = [
                Unidentified(node=cid, reason=reason) for cid, reason in sorted(failed.items())
            ]
        devices = {
            self._device_ids[c]: p
            for c, p in connected.items()
            if c in self._device_ids and c not in failed
        }
        return dict(sorted(devices.items()))

    def _identify(self, proxies: list[ClientProxy]) -> list[int | str]:
        """The device id of each of ``proxies`` (:attr:`identify`'s, or asked of each
        concurrently, as Flower sends a round's fit messages), or why it has none."""
        if not proxies:
            return []
        if self.identify is not None:
            answers = self.identify([proxy.cid for proxy in proxies])
        else:
            with ThreadPoolExecutor(max_workers=min(32, len(proxies))) as pool:
                answers = list(pool.map(self._ask_device_id, proxies))
        return [self._in_range(answer) for answer in answers]

    def _in_range(self, answer: int | str) -> int | str:
        """``answer`` if it is a device id inside the population's range, else why not."""
        if not isinstance(answer, int):
            return answer
        bound = MAX_DEVICE_ID if self.population is None else self.population
        if not 0 <= answer < bound:
            limit = "the population" if self.population is not None else "MAX_DEVICE_ID"
            return f"{DEVICE_ID_KEY} {answer} is outside [0, {bound}) ({limit})"
        return answer

    def _ask_device_id(self, proxy: ClientProxy) -> int | str:
        """The node's self-declared device id, or why it gave none."""
        try:
            res = proxy.get_properties(
                GetPropertiesIns(config={}), timeout=self.settings.connect_timeout, group_id=0
            )
        except Exception as error:  # noqa: BLE001  (Flower raises ValueError on error replies)
            return f"{type(error).__name__}: {error}"
        value = res.properties.get(DEVICE_ID_KEY) if res.status.code == Code.OK else None
        if not isinstance(value, int) or isinstance(value, bool):
            return f"no integer {DEVICE_ID_KEY!r} ({res.status.message or res.properties})"
        return value

    def sample(
        self,
        devices: dict[int, ClientProxy],
        n: int,
        rnd: int,
        *,
        purpose: Purpose,
        poisson: bool,
    ) -> list[ClientProxy]:
        """The plan's seeded sample of ``n`` expected devices among the connected
        ``devices`` (by device id) for ``purpose`` in round ``rnd``."""
        available = np.fromiter(devices, np.int64, len(devices))
        ids = self.plan.sample(rnd, n, purpose=purpose, poisson=poisson, available=available)
        return [devices[int(i)] for i in ids]

    def in_device_order(
        self, results: list[tuple[ClientProxy, Any]]
    ) -> list[tuple[ClientProxy, Any]]:
        """``results`` ordered by device id, not by when they arrived: sums are then the
        same to the last digit on every run."""
        return sorted(
            results, key=lambda result: self._device_ids.get(getattr(result[0], "cid", ""), -1)
        )

    def request(self, rnd: int, cohort: int | None = None) -> Request:
        """Round ``rnd``'s request to a cohort of ``cohort`` devices (``None``: the
        expected cohort): the model's step with its settings, whether the device may
        report its training loss, its clip norm and noise share, record-level DP."""
        settings = self.settings
        task_settings = dict(settings.device_config())
        if settings.record_dp.enabled:
            task_settings.update(settings.record_dp.to_config())
        mechanism = self.plan.mechanism
        dp = None
        if mechanism is not None:
            share = mechanism.share_std(cohort or settings.clients_per_round)
            dp = DeviceDP(mechanism.sensitivity, share)
        # A device's own training loss would bypass both protections: report it only when
        # neither secure aggregation nor DP is on.
        private = settings.secagg.enabled or settings.dp.enabled or settings.record_dp.enabled
        return Request(
            task=Task.MODEL, round=rnd, settings=task_settings, dp=dp, report_loss=not private
        )

    def sign(self, request: Request, parameters: Parameters) -> Request:
        """``request`` with the signature of the ``parameters`` it is sent with (devices
        verify it before use), when the run signs its releases."""
        if self.release_key is None:
            return request
        arrays = parameters_to_ndarrays(parameters)
        signature = sign_arrays(arrays, round=request.round, private_key=self.release_key)
        return request.with_(signature=signature)

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """The global shared arrays (fresh or from the resumed checkpoint)."""
        return ndarrays_to_parameters(self.server.arrays())

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """A seeded cohort of ``clients_per_round`` devices."""
        rnd = self._global_round(server_round)
        self._started = time.perf_counter()
        self._record = RoundRecord(round=rnd)
        if self.plan.budget_spent():
            self._record.skipped = BUDGET_SPENT
            return []
        devices = self.connected_devices(client_manager)
        draw = self.plan.draw(rnd, np.fromiter(devices, np.int64, len(devices)))
        if draw.skipped is not None:
            assert self.plan.mechanism is not None
            self._record.skipped = draw.skipped
            self._record.privacy = PrivacySpent.of(self.plan.mechanism)
            return []
        cohort = [devices[int(i)] for i in draw.cohort]
        self._record.cohort = len(cohort)
        if self.settings.record_dp.enabled:
            self.participations.update(str(client.cid) for client in cohort)
            self._record.record_privacy = RecordPrivacy(
                epsilon=self._record_dp_report()["epsilon"],
                max_participations=self.max_participations,
            )
        request = self.sign(self.request(rnd, len(cohort)), parameters)
        fit_ins = FitIns(parameters, request.to_config())
        return [(client, fit_ins) for client in cohort]

    def aggregate_fit(
        self, server_round: int, results: flower.FitResults, failures: flower.FitFailures
    ) -> flower.AggregatedFit:
        """Average the updates, check them, step the server optimiser, checkpoint."""
        rnd = self._global_round(server_round)
        failures = distinct_failures(failures)
        results = self.in_device_order(results)
        if not results:
            reasons = failure_reasons(failures)
            raise RuntimeError(
                f"round {rnd}: no device returned an update ({len(failures)} failures: "
                f"{'; '.join(reasons) or 'no reason given'})"
            )
        updates, rejected = self._checked(results, rnd)
        mean = aggregate(updates)
        refused = self._refused_sum(mean, devices=len(updates))
        if refused is not None:
            return self._fail_round(rnd, refused, results=results, failures=failures)
        if not all(np.all(np.isfinite(a)) for a in mean):
            raise RuntimeError(f"round {rnd}: the aggregated update is not finite")
        mean = [np.asarray(a, np.float32) for a in mean]
        if self.plan.mechanism is not None:
            mean = self.plan.release(mean, rnd=rnd, devices=len(updates))
            self._record.privacy = PrivacySpent.of(self.plan.mechanism)
        new = self.server.step(mean)
        metrics = _mean_metrics([(r.num_examples, r.metrics) for _, r in results])
        record = self._record
        record.fit = metrics
        record.devices = len(updates)
        record.failures = len(failures) + len(rejected)
        record.upload_bytes_per_device = self._upload_bytes()
        record.update_norm = float(
            np.sqrt(sum(float((a.astype(np.float64) ** 2).sum()) for a in mean))
        )
        if failures:  # only then, so a clean round's record stays small
            record.failure_reasons = failure_reasons(failures)
        dropouts = (record.cohort or 0) - len(results) - len(failures)
        if dropouts > 0:  # sent a request, never answered (under SecAgg+: masks removed)
            record.dropouts = dropouts
            record.dropout_reason = "no reply within the stage's timeout"
        if rejected:
            record.rejected = rejected
        return ndarrays_to_parameters(new), dict(metrics)

    def _refused_sum(self, mean: list[np.ndarray], *, devices: int) -> str | None:
        """Under SecAgg+, why the unmasked mean of ``devices`` updates cannot come from
        honest devices (``check_secure_sum``: summed weights other than ``devices``
        honest ones', a coordinate beyond ``n r``, or under DP a norm beyond
        ``honest_sum_bound``); ``None`` when it can, and always in plain mode (each update
        was checked on its own)."""
        if not self.settings.secagg.enabled:
            return None
        mechanism = self.plan.mechanism
        total = [np.asarray(a, np.float64) * devices for a in mean]
        weight_sum, self.unmasked_weight_sum = self.unmasked_weight_sum, None
        return check_secure_sum(
            total,
            devices=devices,
            weight_sum=weight_sum,
            secagg=self.plan.secagg,
            clip_norm=None if mechanism is None else mechanism.sensitivity,
            noise_std=self.plan.noise_share_std(self._record.cohort or devices),
        )

    def _fail_round(
        self,
        rnd: int,
        reason: str,
        *,
        results: list[tuple[ClientProxy, FitRes]],
        failures: flower.FitFailures,
    ) -> flower.AggregatedFit:
        """Fail round ``rnd`` for ``reason``: the model does not change, nothing is
        released (``finish_round`` publishes no release of a failed round) and, under DP,
        the round is charged as a skipped one (its cohort was drawn)."""
        record = self._record
        record.devices = len(results)
        record.failures = len(failures)
        record.aggregation = "refused: the unmasked sum is out of bounds"
        record.failed = (
            f"round {rnd} failed: {reason}; a device sent an update outside what SecAgg+ "
            "and its clip norm allow (a modified or broken device); the model did not change"
        )
        if failures:
            record.failure_reasons = failure_reasons(failures)
        if self.plan.mechanism is not None:
            self.plan.mechanism.skip()
            record.privacy = PrivacySpent.of(self.plan.mechanism)
        _log.error(record.failed)
        return None, {}

    def _checked(
        self, results: list[tuple[ClientProxy, FitRes]], rnd: int
    ) -> tuple[list[tuple[list[np.ndarray], int]], list[str]]:
        """The updates fit to aggregate, and why the others were rejected.

        In plain mode every device's update is checked before it reaches the mean
        (``check_update``): its shapes, finite values and, where the device clipped it
        and added no noise of its own (central DP), a norm within the clip norm. A bad
        update is left out (the device counts as dropped); a round with none left fails.
        Under SecAgg+ the one result is already the sum: its shapes are checked (each
        device checked its own update before masking)."""
        shapes = [tuple(a.shape) for a in self.server.arrays()]
        updates = [(parameters_to_ndarrays(r.parameters), r.num_examples) for _, r in results]
        if self.settings.secagg.enabled:
            for arrays, _ in updates:
                if [tuple(a.shape) for a in arrays] != shapes:
                    raise RuntimeError(
                        f"round {rnd}: an update's shapes differ from the model's {shapes}"
                    )
            return updates, []
        mechanism = self.plan.mechanism
        bound = math.inf if mechanism is None else mechanism.plain_bound()
        kept, rejected = [], []
        for (proxy, _), (arrays, weight) in zip(results, updates, strict=True):
            try:
                check_update(arrays, expected_shapes=shapes, bound=bound)
            except ValueError as error:
                rejected.append(f"node {getattr(proxy, 'cid', '?')}: {error}")
                continue
            kept.append((arrays, weight))
        if not kept:
            raise RuntimeError(f"round {rnd}: every update was rejected: {'; '.join(rejected)}")
        return kept, rejected

    def _upload_bytes(self) -> int:
        """Bytes of the update a device uploads: float32 parameters, or under SecAgg+ the
        masked vector, which Flower sends as int64 (key agreement adds a few small
        messages on top)."""
        per_value = MASKED_VALUE_BYTES if self.settings.secagg.enabled else 4
        return int(sum(per_value * p.numel() for p in self.server.params))

    @property
    def max_participations(self) -> int:
        """Rounds the most-sampled device took part in (an upper bound after a resume)."""
        return self._participations_before + max(self.participations.values(), default=0)

    def _record_dp_report(self) -> dict[str, Any]:
        return self.settings.record_dp.report(self.max_participations)

    def privacy_report(self) -> dict[str, Any] | None:
        """The run's user-level (ε, δ), noise multiplier, clip norm, sampling rate, rounds,
        mode; with record-level DP, its own figures under ``"record"`` (ε of the
        most-sampled device's records). ``None`` when neither kind of DP is on."""
        report: dict[str, Any] | None = None
        if self.plan.mechanism is not None:
            report = self.plan.mechanism.report()
        if self.settings.record_dp.enabled:
            report = report or {"mode": "off", "epsilon": math.inf}
            report["record"] = self._record_dp_report()
        analytics = {
            query.name: query.report()
            for query in (self.trending_query, self.evaluation_query)
            if query is not None and query.report() is not None
        }
        if analytics:
            report = report or {"mode": "off", "epsilon": math.inf, "delta": None}
            report["analytics"] = analytics
        return report

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """On evaluation rounds, a seeded sample of ``eval_clients`` devices (every device on
        the last round); none on other rounds."""
        rnd = self._global_round(server_round)
        if not self.plan.evaluates(rnd):
            self.finish_round(rnd)
            return []
        devices = self.connected_devices(client_manager)
        n = self._eval_cohort(rnd, len(devices))
        self._eval_full = n >= len(devices)
        chosen = self.sample(devices, n, rnd, purpose=Purpose.EVALUATION, poisson=False)
        request = self.request(rnd).with_(task=self.evaluates)
        config = self.sign(request, parameters).to_config()
        return [(client, EvaluateIns(parameters, config)) for client in chosen]

    def _eval_cohort(self, rnd: int, connected: int) -> int:
        """Devices an evaluation round asks: all on the last round, else ``eval_clients``."""
        if rnd != self.settings.rounds and self.settings.eval_clients is not None:
            return self.settings.eval_clients
        return connected

    def aggregate_evaluate(
        self, server_round: int, results: flower.EvaluateResults, failures: flower.EvaluateFailures
    ) -> flower.AggregatedEvaluate:
        """Mean of the devices' metrics (devices without held-out items weigh 0)."""
        rnd = self._global_round(server_round)
        results = self.in_device_order(results)
        pairs = [(r.num_examples, {**r.metrics, "loss": r.loss}) for _, r in results]
        metrics = _mean_metrics(pairs)
        self._record.evaluate = Evaluation(
            metrics=metrics, devices=sum(n for n, _ in pairs), full=self._eval_full
        )
        self._record.evaluate_failures = len(failures)
        if failures:
            self._record.evaluate_failure_reasons = failure_reasons(failures)
        self.finish_round(rnd)
        loss = metrics.get("loss")
        return (None if loss is None else float(loss)), dict(metrics)

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        """No server-side evaluation: the server holds no interaction data."""
        return None

    def _publish(self, rnd: int) -> Path:
        """Publish round ``rnd``'s signed release; returns its path."""
        assert self.releases is not None
        return self.releases.publish(
            self.release_offset + rnd,
            self.server.arrays(),
            trending=self.trending,
            ranker=self.carried_ranker,
        )

    def finish_round(self, rnd: int) -> None:
        """Close round ``rnd`` (once; Flower's evaluate stage calls this after the round's
        training, queries and evaluation): complete its record, publish its release,
        checkpoint, report."""
        if self.history and self.history[-1].round == rnd:
            return
        record = self._record
        if record.devices is None and record.skipped is None:
            # the fit workflow ended without aggregating (e.g. SecAgg+ halted below its
            # reconstruction threshold): the model did not change this round
            record.devices = 0
            record.aggregation = "none: no aggregate arrived"
            if self.settings.secagg.enabled:
                record.failed = (
                    f"round {rnd} failed: SecAgg+ halted without an aggregate (as a rule: "
                    f"fewer than its reconstruction threshold, "
                    f"{self.settings.secagg.reconstruction_threshold}, of a device's neighbours "
                    "answered a stage within its timeout); the model did not change"
                )
                _log.error(record.failed)
        if self.releases is not None and record.failed is None:
            record.release = self._publish(rnd).name
        record.seconds = time.perf_counter() - self._started
        self.history.append(record)
        if self.checkpoints is not None:
            self.checkpoints.save(
                Checkpoint(
                    round=rnd,
                    server_state=self.server.state_dict(),
                    history=self.history,
                    fingerprint=self.fingerprint,
                )
            )
        if self.on_round is not None:
            self.on_round(record)
