"""Recommending on a device: the pipeline over the installed release and the person's
state, reasons a person can read, and the ranker's replayed training example."""

from __future__ import annotations

import operator
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stamen.client.device.core import DeviceCore
from stamen.client.device.events import EVENT_KINDS, validate_context
from stamen.client.device.served import ServedRelease
from stamen.client.pipeline.candidates import ApproximateScores, Request
from stamen.client.pipeline.recommend import offered_example, run_pipeline
from stamen.errors import EventError
from stamen.models.two_tower.context import UNKNOWN_HOUR, UNKNOWN_WEEKDAY

__all__ = ["Recommendation", "ServingMixin"]


@dataclass(frozen=True)
class Recommendation:
    """One recommended item: the app's id, its relevance, a reason a person can read, the
    stage that earned it (a candidate generator of ``stamen.client.pipeline.candidates``: ``"cf"``,
    ``"content"``, ``"trending"``, ``"fresh"``, ``"popular"``; or ``"explore"``) and the
    probability the pipeline's policy gave it in its position (1 without exploration);
    ``scores`` holds the score each candidate generator that proposed it gave it;
    ``latency_s`` the seconds ``Device.recommend`` took to build its list (the same on every
    item of a list; ``None`` for an item not from ``recommend``; left out of comparisons),
    which ``Device.log_shown`` logs."""

    item: str
    score: float
    reason: str
    source: str
    propensity: float = 1.0
    scores: Mapping[str, float] = field(default_factory=dict)
    latency_s: float | None = field(default=None, compare=False)


class ServingMixin(DeviceCore):
    """Recommendations and the ranker's example (a part of ``Device``)."""

    def recommend(
        self,
        k: int = 10,
        *,
        context: Mapping[str, Any] | None = None,
        exclude: Iterable[str] = (),
        at: float | None = None,
    ) -> list[Recommendation]:
        """The ``k`` best items for the person, best first, each with a reason.

        The on-device pipeline (``stamen.client.pipeline.recommend``, settings ``self.pipeline``):
        candidate generators (collaborative filtering against the user vector, content
        against the person's genre profile, the release's trending counts, the newest
        items, popularity for a person with no history), fused by rank, re-ranked under
        the rules (the person's own and rejected items; ``exclude``, the app's blocked
        item ids; availability in ``context["region"]``), diversified by MMR, capped per
        genre, explored ε-greedily. Never an exception for lack of data: with no release,
        an empty list. ``context`` (``hour``, ``weekday``, ``region``; a missing hour or
        weekday is read from the device's local clock) enters the score where the
        release's model reads context; it never leaves the device. ``at``: the request's
        time in seconds since the epoch (default: the device's clock; replays of old
        data pass the time they replay, so that item ages and launch windows mean then).

        The list: at most ``k`` distinct items, never one the person consumed or
        rejected, nor one in ``exclude``; fewer than ``k`` only when fewer remain
        eligible (the catalogue less those items and those unavailable in the region).
        In list order, which is the pipeline's final order (after diversification and
        exploration), so ``score`` (the fused relevance the re-ranker started from)
        need not decrease down the list; ``propensity`` is each slot's probability
        under the exploration policy.

        Raises:
            ValueError: ``k`` below 1.
            TypeError: ``exclude`` is a single string rather than a collection of ids.
            EventError: ``context`` is malformed (checked as ``record`` checks it).
        """
        k, excluded = _checked_k(k), _excluded_ids(exclude)
        context = validate_context(context)
        with self._lock:
            self._open_store()
            return self._recommend(k, context, excluded, at)

    def recommend_many(
        self,
        surfaces: Mapping[str, Mapping[str, Any]],
        *,
        distinct: bool = False,
        at: float | None = None,
    ) -> dict[str, list[Recommendation]]:
        """Lists for several surfaces of one screen at once, under one hold of the device:
        ``surfaces`` maps each surface's name to :meth:`recommend`'s keyword arguments
        (``k``, ``context``, ``exclude``). With ``distinct=True`` an item shown on a
        surface is left out of the surfaces after it (in ``surfaces``' order).

        Raises:
            TypeError: an unknown argument for a surface (the message names it).
            As :meth:`recommend`, naming the surface.
        """
        requests = []
        for name, arguments in surfaces.items():
            unknown = sorted(set(arguments) - {"k", "context", "exclude"})
            if unknown:
                raise TypeError(f"surface {name!r}: unknown arguments {unknown}")
            try:
                requests.append(
                    (
                        name,
                        _checked_k(arguments.get("k", 10)),
                        validate_context(arguments.get("context")),
                        _excluded_ids(arguments.get("exclude", ())),
                    )
                )
            except EventError as error:
                reason = str(error).split(": ", 1)[-1]
                raise EventError(f"surface {name!r}: {reason}", field=error.field) from None
            except (TypeError, ValueError) as error:
                raise type(error)(f"surface {name!r}: {error}") from None
        with self._lock:
            self._open_store()
            shown: list[str] = []
            lists = {}
            for name, k, context, excluded in requests:
                picks = self._recommend(k, context, excluded + shown, at)
                lists[name] = picks
                if distinct:
                    shown += [p.item for p in picks]
            return lists

    def similar(
        self, item: str, k: int = 10, *, exclude: Iterable[str] = (), include_seen: bool = False
    ) -> list[Recommendation]:
        """Items like ``item`` ("more like this"), most similar first: the cosine of the
        installed release's item vectors, each with the reason ``Similar to <title>`` and
        its cosine as the score. Never ``item`` itself, the person's rejected items or
        ``exclude``; nor the person's own items unless ``include_seen``. Fewer than ``k``
        only when fewer remain; ``[]`` with no release.

        Raises:
            KeyError: the installed release's catalogue does not hold ``item``.
            ValueError, TypeError: as :meth:`recommend`'s ``k`` and ``exclude``.
        """
        k, excluded = _checked_k(k), _excluded_ids(exclude)
        with self._lock:
            self._open_store()
            serving = self._serving
            if serving is None:
                return []
            catalog = serving.bundle.catalog
            row = int(catalog.index_of([str(item)])[0])
            if row < 0:
                raise KeyError(f"{item!r} is not in the installed release's catalogue")
            table, norms = serving.table, serving.item_norms
            target = table.rows(np.array([row]))[0].astype(np.float64)
            cosine = table.scores(target[None])[0] / np.maximum(
                norms * np.linalg.norm(target), 1e-12
            )
            left_out = [np.array([row]), self._rejected, catalog.index_of(excluded)]
            if not include_seen:
                left_out.append(self._items)
            gone = np.concatenate(left_out).astype(np.int64)
            cosine[gone[gone >= 0]] = -np.inf
            k = min(k, int(np.isfinite(cosine).sum()))
            top = np.argpartition(-cosine, k - 1)[:k] if k else np.zeros(0, np.int64)
            top = top[np.argsort(-cosine[top], kind="stable")]
            reason = f"Similar to {catalog.title(row)}"
            return [
                Recommendation(catalog.item_id(int(r)), float(cosine[r]), reason, "similar")
                for r in top
            ]

    def _recommend(
        self, k: int, context: dict[str, Any], excluded: list[str], at: float | None
    ) -> list[Recommendation]:
        """:meth:`recommend` with checked arguments, under the lock; each item carries the
        seconds the list took to build (``Recommendation.latency_s``)."""
        serving = self._serving
        if serving is None:
            return []
        began = time.perf_counter()
        catalog = serving.bundle.catalog
        when = time.time() if at is None else float(at)
        request = self._request(serving, self._ordered, when, context, self._factor)
        blocked = catalog.index_of(excluded)
        region = context.get("region")
        picks = run_pipeline(
            request,
            self._served_pipeline(),
            k,
            vectors=serving.table.rows,
            because=self._reasons,
            blocked=blocked[blocked >= 0],
            region=None if region is None else str(region),
            rng=self._rng,
            ranker=serving.ranker,
        )
        items = [catalog.item_id(p.row) for p in picks]
        latency = time.perf_counter() - began
        return [
            Recommendation(item, p.score, p.reason, p.source, p.propensity, p.scores, latency)
            for item, p in zip(items, picks, strict=True)
        ]

    def _request(
        self,
        serving: ServedRelease,
        ordered: np.ndarray,
        at: float,
        context: Mapping[str, Any] | None,
        factor: np.ndarray | None,
        rejected: np.ndarray | None = None,
    ) -> Request:
        """What the pipeline sees of a request at time ``at`` by a person whose items are
        ``ordered`` (catalogue rows in time order), whose user vector is ``factor`` and who
        rejected ``rejected`` (default: every item the person rejected)."""
        rejected = self._rejected if rejected is None else rejected
        cf_scores: np.ndarray | ApproximateScores | None = None
        if factor is not None:
            vector = serving.request_vector(factor, context, at)
            if serving.approximate is not None:  # the release's item index: no full scan
                cf_scores = ApproximateScores(serving.approximate, vector)
            else:
                cf_scores = serving.table.scores(vector[None])[0] + serving.bias
        return Request(
            index=serving.index,
            cf_scores=cf_scores,
            history=ordered,
            history_at=self._times(ordered),
            rejected=rejected,
            rejected_at=self._times(rejected),
            excluded=np.union1d(ordered, rejected),
            now=at,
            context=dict(context or {}),
            content_half_life_s=self._served_pipeline().content_half_life_days * 86400.0,
        )

    def ranking_example(self, recent: int = 1) -> tuple[np.ndarray, np.ndarray] | None:
        """This device's training example for the ranker, replayed from its own history:
        the list the pipeline (``self.pipeline``) would have given the ranker just before
        the person's last ``recent`` items, from the history before them and the
        installed release, with the items the person then took marked
        (``stamen.client.pipeline.recommend.offered_example``; the request's context is that of the
        first of those events). ``None`` without a release, with no more than
        ``recent`` items, or when the list holds none of them. Computed here; only the
        ranker's weight update, clipped and aggregated, ever leaves the device."""
        if recent < 1:
            raise ValueError(f"recent must be at least 1 (got {recent})")
        with self._lock:
            self._open_store()
            serving = self._serving
            if serving is None or len(self._ordered) <= recent:
                return None
            before, after = self._ordered[:-recent], self._ordered[-recent:]
            first = serving.bundle.catalog.item_id(int(after[0]))
            hour, weekday = self._contexts[first].tolist()
            context = {} if hour == UNKNOWN_HOUR else {"hour": hour}
            context |= {} if weekday == UNKNOWN_WEEKDAY else {"weekday": weekday}
            at = self._latest[first][0]
            request = self._request(serving, before, at, context, serving.factor(before, None))
            return offered_example(request, self._served_pipeline(), after)

    def _reasons(self, ids: np.ndarray) -> list[str]:
        """ "Because you <verb> <title>": the person's item most similar to each pick."""
        serving = self._serving
        assert serving is not None
        history = serving.table.rows(self._items)
        picks = serving.table.rows(ids)
        history = history / np.maximum(np.linalg.norm(history, axis=1, keepdims=True), 1e-12)
        picks = picks / np.maximum(np.linalg.norm(picks, axis=1, keepdims=True), 1e-12)
        nearest = self._items[np.argmax(picks @ history.T, axis=1)]
        catalog = serving.bundle.catalog
        reasons = []
        for index in nearest:
            item = catalog.item_id(int(index))
            verb = EVENT_KINDS[self._latest[item][1]].verb
            reasons.append(f"Because you {verb} {catalog.title(int(index))}")
        return reasons


def _checked_k(k: Any) -> int:
    k = operator.index(k)
    if k < 1:
        raise ValueError(f"k must be at least 1 (got {k})")
    return k


def _excluded_ids(exclude: Any) -> list[str]:
    if isinstance(exclude, str | bytes):
        raise TypeError(
            f"exclude takes a collection of item ids, not one string ({exclude!r}): "
            f"write exclude=[{exclude!r}]"
        )
    return [str(item) for item in exclude]
