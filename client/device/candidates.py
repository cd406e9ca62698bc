"""Off-policy evaluation of a release's candidate policies on a device (a part of ``Device``;
the contribution's layout and clipping are in ``stamen.client.device.off_policy``).

A release may also carry candidate policies (``extras["candidate_policies"]``:
``stamen.models.off_policy``), which no device serves: :meth:`off_policy_contribution` is what
this device contributes to their off-policy evaluation. Each candidate's probability of a
logged item in its slot is found by **replaying** the logged request under the candidate's
settings (the app's own, with its overrides): the pipeline at the request's time, with the
person's history and rejections as of then (items whose latest event came before it) and the
release installed now, exploring never, gives the candidate's greedy list ``g`` and each
slot's propensity ``(1 − ε_c) + ε_c / n_j`` (``ε_c``: the candidate's exploration rate,
``n_j`` the items it could explore among at slot ``j``). The candidate shows the logged item
``x`` at slot ``j`` with probability ``(1 − ε_c) + ε_c / n_j`` when ``x = g_j`` and
``ε_c / n_j`` otherwise (exploration draws uniformly among the eligible items, the slots
before ``j`` as logged). Not replayed: the request's context (its hour and weekday come from
its time) and a release other than the installed one (a request logged under an older release
is replayed under this one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from stamen.client.device.experiment_arms import ExperimentsMixin
from stamen.client.device.serving import ServingMixin

if TYPE_CHECKING:  # loaded where a release carries candidates (pydantic models)
    from stamen.client.device.experiments import CandidatePolicy
    from stamen.client.device.impressions import Impression

__all__ = ["CandidatesMixin"]


class CandidatesMixin(ServingMixin, ExperimentsMixin):
    """The installed release's candidate policies on this device (see module docstring)."""

    def candidate_policies(self) -> tuple[CandidatePolicy, ...]:
        """The candidate policies the installed release carries for off-policy evaluation
        (none without a release; a release whose candidates are not valid is refused when
        applied)."""
        with self._lock:
            self._open_store()
            return self._candidates()

    def _candidates(self) -> tuple[CandidatePolicy, ...]:
        return () if self._serving is None else self._serving.candidates

    def off_policy_contribution(
        self,
        candidates: Sequence[str],
        *,
        max_weights: Sequence[float],
        start: float,
        end: float,
        max_slots: int,
        attribution_s: float,
    ) -> np.ndarray | None:
        """What this device contributes to the off-policy evaluation of ``candidates``
        (names of the installed release's candidate policies, in the server's order) over
        ``[start, end)``: its clipped first moments and their products
        (``stamen.client.device.off_policy.device_contribution``; each candidate's
        probabilities by replay: module docstring), with the server's weight clips
        ``max_weights`` and at most ``max_slots`` slots. ``None`` when the installed release
        does not carry every one of them. Computed here; only a secure, noised sum of it
        ever leaves.

        Raises:
            ValueError: ``end`` is not after ``start``, or ``max_weights`` does not give
                one clip per candidate.
        """
        if not end > start:
            raise ValueError(f"the window must end after it starts (start {start}, end {end})")
        if len(max_weights) != len(candidates):
            raise ValueError(
                f"{len(max_weights)} weight clips for {len(candidates)} candidates {candidates}"
            )
        from stamen.client.device.off_policy import OffPolicyBounds, device_contribution

        bounds = OffPolicyBounds(
            max_slots=int(max_slots),
            max_weight=tuple(float(w) for w in max_weights),
            attribution_s=float(attribution_s),
        )
        with self._lock:
            store = self._open_store()
            known = {c.name: c for c in self._candidates()}
            if not candidates or any(name not in known for name in candidates):
                return None
            shown = [i for i in store.impressions() if start <= i.at < end]
            target = self._candidate_probabilities([known[n] for n in candidates], shown)
            return device_contribution(
                shown,
                store.events(),
                target,
                start=start,
                end=end,
                bounds=bounds,
                rating_threshold=self.rating_threshold,
            )

    def _candidate_probabilities(
        self, candidates: Sequence[CandidatePolicy], shown: Sequence[Impression]
    ) -> np.ndarray:
        """Each candidate's probability of each logged impression's item in its slot, shape
        ``(len(shown), len(candidates))``, by replaying its request (module docstring)."""
        from stamen.client.pipeline.recommend import run_pipeline

        serving = self._serving
        assert serving is not None
        catalog = serving.bundle.catalog
        target = np.zeros((len(shown), len(candidates)))
        requests: dict[int, list[int]] = {}
        for i, impression in enumerate(shown):
            requests.setdefault(impression.request, []).append(i)
        ordered, rejected = self._ordered, self._rejected
        ordered_at, rejected_at = self._times(ordered), self._times(rejected)
        for slots in requests.values():
            at = shown[slots[0]].at
            before = ordered[ordered_at < at]
            request = self._request(
                serving, before, at, {}, serving.factor(before, None), rejected[rejected_at < at]
            )
            k = max(shown[i].position for i in slots) + 1
            for c, candidate in enumerate(candidates):
                settings = candidate.settings(self.pipeline)
                picks = run_pipeline(
                    request,
                    settings,
                    k,
                    vectors=serving.table.rows,
                    because=self._reasons,
                    blocked=np.zeros(0, np.int64),
                    region=None,
                    rng=_NEVER_EXPLORES,  # type: ignore[arg-type]
                    ranker=serving.ranker,
                )
                greedy = catalog.item_ids_of(np.array([p.row for p in picks], np.int64))
                for i in slots:
                    j = shown[i].position
                    if j >= len(picks):
                        continue  # the candidate fills fewer slots: it never shows this one
                    own = picks[j].propensity  # (1 − ε) + ε / n_j
                    other = own - (1.0 - settings.explore)  # ε / n_j
                    target[i, c] = own if shown[i].item == greedy[j] else other
        return np.clip(target, 0.0, 1.0)


class _NeverExplores:
    """A stand-in generator for the re-ranker whose draw never falls below an exploration
    rate (every rate is at most 1): the replay takes the greedy pick at every slot, and each
    slot's propensity is still computed with the candidate's rate."""

    def random(self) -> float:
        return 1.0


_NEVER_EXPLORES = _NeverExplores()
