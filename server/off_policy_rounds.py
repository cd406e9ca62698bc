"""The off-policy evaluation round: the candidate policies of a run's starting release
estimated on the devices' own impression logs, each one private sum over every device.

A release carries candidate policies (``stamen.models.off_policy``: names, pipeline
overrides, weight clips ``W_c``) that no device serves. A run whose starting release
carries some evaluates them at every measurement of its A/B experiments (every
``analytics.experiments.every`` rounds, between a round's training and its release; the same
window, level ``alpha`` and DP settings: ``stamen.server.experiment_rounds``, whose
:class:`~stamen.server.experiment_rounds.Measurements` runs it): one
:class:`~stamen.server.analytics.PrivateSum` query named :data:`OFF_POLICY`. Every enrolled
device (sampling rate 1) answers with its vector (``Device.off_policy_contribution``: its
clipped first moments ``[slots, reward, ips_1, weight_1, …]`` and their products, every
entry in ``[0, 1]``, by replaying each logged request under each candidate; zeros when its
release does not carry them), clipped and noised like any query and summed under SecAgg+,
so the server sees only the noisy sums. The evaluation has its own accountant (its ε is
reported apart from training's and each experiment's) and random streams.

The report (``stamen.server.off_policy_stats.off_policy_report``) goes into the round's
record under ``analytics["off-policy"]``: the logging policy's value per slot (engagements
per logged slot), and per candidate its IPS and SNIPS value per slot and its effect against
the logging policy, each with a delta-method interval over people that includes the noise's
variance, and the effect's p-value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from stamen.models.off_policy import width
from stamen.models.wire import Scalar, Task
from stamen.server.analytics import PrivateSum
from stamen.server.experiment_rounds import Measurements, privacy_spent
from stamen.server.off_policy_stats import off_policy_report

if TYPE_CHECKING:
    from stamen.server.strategy import FederatedAveraging

__all__ = ["OFF_POLICY", "OffPolicyEvaluation"]

#: The evaluation's name in a round record's ``analytics`` (and in its report).
OFF_POLICY = "off-policy"

#: The evaluation's place for its random streams (an experiment's is its place in the
#: release, from 0; this one has a key of a different length, so never the same).
_STREAMS = (1, 0)


class OffPolicyEvaluation(Measurements):
    """The off-policy evaluation of a run's candidate policies (see module docstring).

    Args:
        owner: the run's training strategy (its devices, sampling, settings, history).
        candidates: each candidate's weight clip ``W_c``, by name, in the release's order
            (``stamen.models.off_policy.candidate_policies``).

    Raises:
        ValueError: no candidates.
    """

    def __init__(self, owner: FederatedAveraging, candidates: Mapping[str, float]) -> None:
        if not candidates:
            raise ValueError("an off-policy evaluation needs at least one candidate policy")
        self.candidates = dict(candidates)
        super().__init__(
            owner,
            {OFF_POLICY: width(len(self.candidates))},
            task=Task.OFF_POLICY,
            seeds={OFF_POLICY: _STREAMS},
            what="off-policy evaluation",
        )

    def name(self, key: str) -> str:
        """``off-policy``."""
        return key

    def settings_of(self, key: str, *, start: float) -> dict[str, Scalar]:
        """The candidates (names, in order), their weight clips and the slot clip."""
        return {
            "off-policy-candidates": json.dumps(list(self.candidates)),
            "off-policy-max-weights": json.dumps(list(self.candidates.values())),
            "off-policy-max-slots": self.settings.off_policy_max_slots,
        }

    def expected(self, key: str) -> int:
        """The layout's width for the candidates."""
        return width(len(self.candidates))

    def report(self, key: str, sums: np.ndarray, query: PrivateSum) -> dict[str, Any]:
        """The logging policy's and each candidate's values with their intervals."""
        assert query.result is not None
        return off_policy_report(
            sums,
            evaluation=key,
            candidates=list(self.candidates),
            max_weights=list(self.candidates.values()),
            noise_std=query.result.noise_std,
            alpha=self.settings.alpha,
            privacy=privacy_spent(query),
        ).to_json()
