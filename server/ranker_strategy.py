"""Federated training of the ranker over Flower: :class:`RankerAveraging`.

The same strategy as the retrieval model's (``FederatedAveraging``: seeded cohorts over
stable device ids, Poisson under user-level DP, SecAgg+ when on, clipping and noise,
the accountant, signed releases and checkpoints), averaging the ranker's weights
(``stamen.models.ranker.model``) instead. Every request carries
the ranker's task (``stamen.models.wire.Task.RANKER``) and its settings; a device answers
with its ranker update, computed from the example it replays on itself
(``Device.ranking_example``) and clipped, noised and checked before SecAgg+ masks it
(``stamen.client.flower.tasks.ranker_step``). Each round's release holds the retrieval model's
arrays, unchanged, with the ranker of that round.

Evaluation rounds (``eval_every``, and the last round) ask the devices for the ranker's
metrics on their own offered lists (``stamen.models.ranker.model.RANKER_METRICS``: HR@10 and
NDCG@10 of what each took, as the ranker orders the list and as the list arrived); under
SecAgg+ they are a secure sum like the retrieval model's evaluation
(``stamen.server.analytics``), with their own (ε, δ) when evaluation DP is on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stamen.models.ranker.model import RANKER_METRICS
from stamen.models.ranker.settings import RankerSettings
from stamen.models.ranker.weights import check_ranker, init_ranker
from stamen.models.wire import Request, Task
from stamen.server.analytics import TrendingSettings
from stamen.server.settings import ServerSettings
from stamen.server.strategy import FederatedAveraging

__all__ = ["RankerAveraging"]


class RankerAveraging(FederatedAveraging):
    """``FederatedAveraging`` of the ranker's weights (see module docstring).

    Args:
        settings: rounds, cohort, evaluation schedule, optimiser, SecAgg+ and DP of the
            ranker's training (no trending queries: ``trending`` carries the counts).
        ranker: the ranker's shape and device step.
        retrieval: the retrieval model's shared arrays the devices serve (every release
            of this run carries them, and each round's ranker).
        initial: the ranker to start from (default ``init_ranker``: the retrieval order).
        trending: the retrieval run's latest noisy trending counts, carried into every
            release of this run (``None``: none).
        **kwargs: as ``FederatedAveraging`` (population, release key and writer, …).
    """

    def __init__(
        self,
        settings: ServerSettings,
        *,
        ranker: RankerSettings,
        retrieval: list[np.ndarray],
        initial: list[np.ndarray] | None = None,
        trending: np.ndarray | None = None,
        **kwargs: Any,
    ) -> None:
        start = init_ranker(ranker, settings.seed) if initial is None else initial
        check_ranker(start)
        analytics = settings.analytics.model_copy(
            update={
                "trending": TrendingSettings(),
                "evaluation": settings.analytics.evaluation.model_copy(
                    update={"metrics": RANKER_METRICS}
                ),
            }
        )
        super().__init__(
            settings.model_copy(update={"analytics": analytics}), initial=start, **kwargs
        )
        self.trending = trending
        self.ranker = ranker
        self.retrieval = [np.asarray(a, np.float32) for a in retrieval]
        self.fingerprint["ranker"] = ranker.model_dump()

    evaluates = Task.RANKER

    def request(self, rnd: int, cohort: int | None = None) -> Request:
        """The retrieval model's request, asking for the ranker's step with its settings."""
        base = super().request(rnd, cohort)
        return base.with_(task=Task.RANKER, settings={**base.settings, **self.ranker.to_config()})

    def _publish(self, rnd: int) -> Path:
        assert self.releases is not None
        return self.releases.publish(
            self.release_offset + rnd,
            self.retrieval,
            trending=self.trending,
            ranker=self.server.arrays(),
        )
