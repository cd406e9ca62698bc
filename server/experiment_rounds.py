"""Measurement rounds of A/B experiments: each one a private sum over every device.

A run measures the experiments its starting release carries (``stamen.models.experiments``:
ids and arm names; the devices serve their arms). Every ``analytics.experiments.every``
rounds, between the round's training and its release (``stamen.server.app.RoundEnd``), each
experiment is one :class:`~stamen.server.analytics.PrivateSum` query: every enrolled device
(sampling rate 1) answers with its contribution over the window (its own arm's block of
``[1, y₁, y₁², …]``, each ``y`` clipped to its bound and scaled to ``[0, 1]``, zeros in the
other arms' blocks: ``stamen.client.device.experiments``), clipped and noised like any
query and summed under SecAgg+, so the server sees only the noisy per-arm sums. Each
experiment has its own accountant (its ε is reported per experiment, apart from
training's and the other queries'), its own random streams (the run's seed and the
experiment's place in the release), and its report (``stamen.server.experiment_stats``:
each arm's means, every treatment's effect with an interval that includes the noise's
variance, p-values) goes into the round's record under ``analytics["experiment:<id>"]``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from stamen.models.experiments import METRICS, STATISTICS
from stamen.models.wire import Request, Task
from stamen.privacy import Purpose
from stamen.server.analytics import PrivateSum
from stamen.server.experiment_stats import experiment_report
from stamen.server.rounds import PrivacySpent, QueryRecord

if TYPE_CHECKING:
    from stamen.server.strategy import FederatedAveraging

__all__ = ["QUERY_PREFIX", "ExperimentMeasurements", "query_name"]

#: A measurement's name in a round record's ``analytics``: the prefix and the experiment id.
QUERY_PREFIX = "experiment:"


def query_name(experiment: str) -> str:
    """The name of ``experiment``'s measurement query in the round records."""
    return f"{QUERY_PREFIX}{experiment}"


def _seed(run_seed: int, place: int) -> int:
    """The streams' seed of the experiment at ``place`` in the release (one per experiment,
    so no two experiments share noise)."""
    return int(np.random.SeedSequence([run_seed, 28, place]).generate_state(1)[0])


class ExperimentMeasurements:
    """The measurement queries of a run's experiments (see module docstring).

    Args:
        owner: the run's training strategy (its devices, sampling, settings, history).
        experiments: each experiment's arm names, by id, in the release's order.
    """

    def __init__(
        self, owner: FederatedAveraging, experiments: Mapping[str, tuple[str, ...]]
    ) -> None:
        self.owner = owner
        self.settings = owner.settings.analytics.experiments
        self.arms = dict(experiments)
        population = owner._query_population("experiment measurements")
        releases = max(owner.settings.rounds // max(self.settings.every, 1), 1)
        self.queries = {
            experiment: PrivateSum(
                owner,
                name=query_name(experiment),
                width=len(STATISTICS),
                dp=self.settings.dp,
                population=population,
                cohort=population,
                releases=releases,
                released=owner._asked(query_name(experiment)),
                secagg=owner.settings.secagg,
                seed=_seed(owner.settings.seed, place),
                purpose=Purpose.EXPERIMENT,
            )
            for place, experiment in enumerate(self.arms)
        }

    def due(self, rnd: int) -> bool:
        """Whether round ``rnd`` measures the experiments."""
        every = self.settings.every
        return bool(self.queries) and every > 0 and rnd % every == 0

    def ask(self, experiment: str, rnd: int) -> PrivateSum:
        """``experiment``'s measurement query, set up for round ``rnd`` (no model is sent)."""
        query = self.queries[experiment]
        now = self.settings.now if self.settings.now is not None else time.time()
        start, end = self.settings.window(now)
        bounds = self.settings.bounds
        request = Request(
            task=Task.EXPERIMENT,
            round=rnd,
            settings={
                "experiment-id": experiment,
                "experiment-arms": len(self.arms[experiment]),
                "experiment-place": list(self.arms).index(experiment),
                "experiment-start": float(start),
                "experiment-end": float(end),
                **{f"experiment-{k.replace('_', '-')}": v for k, v in bounds.model_dump().items()},
            },
        )
        # no model: one empty array (Flower's messages cannot carry zero arrays)
        query.ask([np.zeros(0, np.float32)], request)
        return query

    def take(self, experiment: str) -> QueryRecord:
        """The record of ``experiment``'s measurement just run: its query's part and, when
        the sum was released, the experiment's report."""
        query = self.queries[experiment]
        record = dataclasses.replace(query.record)
        names = self.arms[experiment]
        if query.result is not None:
            sums = np.asarray(query.result.total, np.float64)
            if sums.shape != (len(names) * len(STATISTICS),):
                record.failed = f"the sum has {sums.shape} entries, not {len(names)} arms' blocks"
                return record
            privacy = (
                PrivacySpent.of(query.mechanism).to_json()
                if query.mechanism is not None
                else {"epsilon": float("inf"), "mode": "off"}
            )
            report = experiment_report(
                sums.reshape(len(names), len(STATISTICS)),
                experiment=experiment,
                arms=names,
                metrics=METRICS,
                scales=self.settings.bounds.bounds().tolist(),
                noise_std=query.result.noise_std,
                alpha=self.settings.alpha,
                privacy=privacy,
            )
            record.report = report.to_json()
        elif record.skipped is None and record.failed is None:
            record.failed = "SecAgg+ halted without a sum (too few answers)"
        return record
