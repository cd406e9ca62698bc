"""A user-response simulator: how simulated people respond to the lists a variant shows, so
that every variant has a true effect computable in the clear.

**People.** A :class:`Population` holds, per person, the items they interacted with before
the experiment (``seen``), the items they will interact with afterwards (``future``, held out:
the ground truth of what they want) and their activity ``λ`` (expected sessions in the
window). :func:`synthetic_population` draws one (seeded): item popularity is Zipf-like, every
item has one of ``genres`` genres, and each person draws half their items by popularity and
half from their favourite genre. :func:`population_from_interactions` builds one from a real
interaction log (ML-100K: each person's last ``future_fraction`` of interactions by time are the
future), optionally resampled with replacement to a larger population.

**Lists.** A variant shows each person one fixed list of ``k`` items per session
(:func:`variant_lists`): the base policy (``"popular"``: the most popular items the person has
not seen; ``"taste"``: the most popular unseen items of the person's most frequent genre, then
popular ones) with ε-greedy exploration as ``PipelineSettings.explore`` does it (each slot is,
with probability ``explore``, a uniformly random unseen item instead). The exploration draw is
made once per person (seeded), so the lists, and hence the truth, are fixed.

**Responses** (:class:`ResponseModel`), independently per slot and session:

- sessions ``s ~ Poisson(λ)``; a person with ``s = 0`` is not exposed;
- an item at position ``j`` (from 1) that is in the person's future is engaged with
  probability ``min(1, base + p0 / log2(j + 1))``, any other item with probability ``base``;
- an item not in the future is marked ``not_interested`` with probability ``not_interested``
  (never one that is engaged with: the two draws are exclusive by construction, see
  :func:`simulate_counts`);
- organic positive events (on items not shown): ``Poisson(organic · s)``.

**Several windows** (:func:`simulate_windows`). Given the person (their lists and ``λ``), the
windows are independent: each window's counts are a fresh :func:`simulate_counts` draw
(sessions ``~ Poisson(λ)`` per window). Counts are additive, so the counts up to look ``k`` are
the running sum of the first ``k`` windows (:func:`cumulative_counts`); a pre-period window,
before the assignment takes effect, is one more draw with every person under the control's
lists.

**Truth** (:func:`true_means`). The experiment's ratio estimator targets, per arm,
``Σ_i π_i E[y_i | s_i ≥ 1] / Σ_i π_i`` with ``π_i = P(s_i ≥ 1) = 1 − e^{−λ_i}`` (every person is
equally likely to be in each arm). Its terms are exact for ``exposures`` (a truncated Poisson
expectation), ``engagement`` (the mean of the list's slot probabilities) and
``not_interested``; for ``positive_rate`` it is the unclipped expectation ``k · p̄ + organic``
(the clip at ``max_positive_rate`` binds with small probability: the value is approximate).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats

from stamen.client.device.experiments import PersonCounts
from stamen.errors import ConfigError
from stamen.models.experiments import METRICS, MetricBounds

__all__ = [
    "Population",
    "ResponseModel",
    "VariantResponse",
    "cumulative_counts",
    "population_from_interactions",
    "simulate_counts",
    "simulate_windows",
    "synthetic_population",
    "true_means",
    "variant_lists",
    "variant_response",
]


class ResponseModel(BaseModel):
    """The response model's parameters (module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    p0: float = Field(0.35, ge=0, le=1)
    base: float = Field(0.01, ge=0, le=1)
    not_interested: float = Field(0.02, ge=0, le=1)
    organic: float = Field(0.5, ge=0)


@dataclass(frozen=True)
class Population:
    """Simulated people (module docstring): CSR rows of seen and future items, the
    genre of each item (``-1`` where unknown) and each person's activity ``λ``."""

    n_items: int
    seen_indptr: np.ndarray
    seen_items: np.ndarray
    future_indptr: np.ndarray
    future_items: np.ndarray
    activity: np.ndarray
    item_genre: np.ndarray

    @property
    def size(self) -> int:
        """Number of people."""
        return len(self.activity)

    def _keys(self, indptr: np.ndarray, items: np.ndarray) -> np.ndarray:
        rows = np.repeat(np.arange(self.size, dtype=np.int64), np.diff(indptr))
        return np.sort(rows * self.n_items + items)

    @cached_property
    def _seen_keys(self) -> np.ndarray:
        return self._keys(self.seen_indptr, self.seen_items)

    @cached_property
    def _future_keys(self) -> np.ndarray:
        return self._keys(self.future_indptr, self.future_items)

    def contains(self, which: Literal["seen", "future"], items: np.ndarray) -> np.ndarray:
        """Whether each entry of ``items`` (shape ``(people, k)``) is in its person's
        ``which`` set."""
        stored = self._seen_keys if which == "seen" else self._future_keys
        keys = np.arange(self.size, dtype=np.int64)[:, None] * self.n_items + items
        found = np.minimum(np.searchsorted(stored, keys), len(stored) - 1)
        return (stored[found] == keys) if len(stored) else np.zeros(keys.shape, bool)


def _csr(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.arange(0, rows.size + 1, rows.shape[1], dtype=np.int64)
    return indptr, rows.reshape(-1).astype(np.int64)


def synthetic_population(
    size: int,
    *,
    n_items: int = 2000,
    genres: int = 20,
    seen: int = 20,
    future: int = 10,
    zipf: float = 0.9,
    seed: int = 0,
) -> Population:
    """A synthetic population of ``size`` people (module docstring), seeded."""
    if size < 1 or n_items < genres or genres < 1:
        raise ValueError("need at least one person and one genre, and n_items >= genres")
    rng = np.random.default_rng([seed, 28])
    item_genre = rng.integers(0, genres, n_items)
    popularity = 1.0 / np.arange(1, n_items + 1) ** zipf
    cdf = np.cumsum(popularity) / popularity.sum()
    by_genre = [np.flatnonzero(item_genre == g) for g in range(genres)]
    genre_cdfs = [np.cumsum(popularity[i]) / popularity[i].sum() for i in by_genre]
    favourite = rng.integers(0, genres, size)

    def draw(count: int) -> np.ndarray:
        items = np.searchsorted(cdf, rng.random((size, count)), side="right")
        taste = rng.random((size, count)) < 0.5
        for g in range(genres):
            rows = np.flatnonzero(favourite == g)
            picks = np.searchsorted(genre_cdfs[g], rng.random((len(rows), count)), side="right")
            items[rows] = np.where(taste[rows], by_genre[g][picks], items[rows])
        return np.minimum(items, n_items - 1)

    seen_indptr, seen_items = _csr(draw(seen))
    future_indptr, future_items = _csr(draw(future))
    return Population(
        n_items=n_items,
        seen_indptr=seen_indptr,
        seen_items=seen_items,
        future_indptr=future_indptr,
        future_items=future_items,
        activity=rng.gamma(2.0, 1.0, size),
        item_genre=item_genre,
    )


def population_from_interactions(
    user: np.ndarray,
    item: np.ndarray,
    timestamp: np.ndarray,
    *,
    n_items: int,
    item_genre: np.ndarray | None = None,
    future_fraction: float = 0.2,
    size: int | None = None,
    seed: int = 0,
) -> Population:
    """A population from an interaction log: each user's last ``future_fraction`` of
    interactions (by time) are their future, the rest what they have seen; ``size`` people
    are drawn with replacement from the users (``None``: every user once), each with an
    activity ``λ ~ Gamma(2, 1)`` (seeded)."""
    if not 0 < future_fraction < 1:
        raise ValueError(f"future_fraction must lie in (0, 1) (got {future_fraction})")
    user, item, timestamp = (np.asarray(a, np.int64) for a in (user, item, timestamp))
    order = np.lexsort((item, timestamp, user))
    user, item = user[order], item[order]
    users, starts, counts = np.unique(user, return_index=True, return_counts=True)
    rank = np.arange(len(user)) - np.repeat(starts, counts)
    n_future = np.maximum(1, np.floor(counts * future_fraction).astype(np.int64))
    is_future = rank >= np.repeat(counts - n_future, counts)
    rng = np.random.default_rng([seed, 28])
    chosen = np.arange(len(users)) if size is None else rng.integers(0, len(users), size)

    def rows(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        per_user = np.bincount(np.searchsorted(users, user[mask]), minlength=len(users))
        offsets = np.concatenate([[0], np.cumsum(per_user)])
        stored = item[mask]
        lengths = per_user[chosen]
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        take = np.repeat(offsets[chosen] - indptr[:-1], lengths) + np.arange(indptr[-1])
        return indptr, stored[take]

    seen_indptr, seen_items = rows(~is_future)
    future_indptr, future_items = rows(is_future)
    genres = np.full(n_items, -1) if item_genre is None else np.asarray(item_genre, np.int64)
    return Population(
        n_items=n_items,
        seen_indptr=seen_indptr,
        seen_items=seen_items,
        future_indptr=future_indptr,
        future_items=future_items,
        activity=rng.gamma(2.0, 1.0, len(chosen)),
        item_genre=genres,
    )


def _unseen_top(population: Population, ranking: np.ndarray, k: int) -> np.ndarray:
    """Each person's first ``k`` items of ``ranking`` (shape ``(people, r)``) they have not
    seen (``-1`` where fewer remain)."""
    fresh = ~population.contains("seen", ranking)
    order = np.argsort(~fresh, axis=1, kind="stable")[:, :k]
    picked = np.take_along_axis(ranking, order, axis=1)
    return np.where(np.take_along_axis(fresh, order, axis=1), picked, -1)


def variant_lists(
    population: Population,
    overrides: dict[str, Any],
    *,
    base: Literal["popular", "taste"] = "popular",
    k: int = 10,
    seed: int = 0,
) -> np.ndarray:
    """The list each person is shown under an arm with ``overrides`` (module docstring),
    shape ``(people, k)``. Only ``explore`` is simulated.

    Raises:
        ConfigError: an override the simulator does not model.
    """
    unknown = sorted(set(overrides) - {"explore"})
    if unknown:
        raise ConfigError(f"overrides {unknown}: the response simulator models only 'explore'")
    explore = float(overrides.get("explore", 0.0))
    counts = np.bincount(population.seen_items, minlength=population.n_items)
    popular = np.argsort(-counts, kind="stable")
    depth = min(population.n_items, k + int(np.diff(population.seen_indptr).max()))
    ranking = np.broadcast_to(popular[:depth], (population.size, depth))
    if base == "taste":
        ranking = _taste_ranking(population, popular, depth)
    lists = _unseen_top(population, np.ascontiguousarray(ranking), k)
    rng = np.random.default_rng([seed, 28, int(explore * 1e6)])
    swap = rng.random(lists.shape) < explore
    random_items = rng.integers(0, population.n_items, lists.shape)
    random_items = np.where(population.contains("seen", random_items), lists, random_items)
    return np.where(swap, random_items, lists)


def _taste_ranking(population: Population, popular: np.ndarray, depth: int) -> np.ndarray:
    genre = population.item_genre
    if genre.min() < 0:
        raise ConfigError("the 'taste' policy needs every item's genre")
    genres = int(genre.max()) + 1
    rows = np.repeat(np.arange(population.size), np.diff(population.seen_indptr))
    tally = np.zeros((population.size, genres), np.int64)
    np.add.at(tally, (rows, genre[population.seen_items]), 1)
    favourite = tally.argmax(axis=1)
    ranking = np.empty((population.size, 2 * depth), np.int64)
    for g in range(genres):
        people = np.flatnonzero(favourite == g)
        own = popular[genre[popular] == g][:depth]
        others = popular[genre[popular] != g]
        head = np.concatenate([own, others[: 2 * depth - len(own)]])
        ranking[people] = head[: 2 * depth]
    return ranking


@dataclass(frozen=True)
class VariantResponse:
    """One variant's lists turned into response probabilities: per person the number of
    shown items not in their future (``misses``), and the hit slots as flat arrays
    (``hit_person``, ``hit_p``: the person and the engagement probability of each)."""

    k: int
    slot_p: np.ndarray
    misses: np.ndarray
    hit_person: np.ndarray
    hit_p: np.ndarray


def variant_response(
    population: Population, lists: np.ndarray, model: ResponseModel
) -> VariantResponse:
    """The response probabilities of ``lists`` (shape ``(people, k)``; ``-1``: an empty slot,
    never engaged with)."""
    k = lists.shape[1]
    hit = population.contains("future", lists) & (lists >= 0)
    position = np.arange(1, k + 1)
    p_hit = np.minimum(1.0, model.base + model.p0 / np.log2(position + 1))
    slot_p = np.where(hit, p_hit, np.where(lists >= 0, model.base, 0.0))
    person, slot = np.nonzero(hit)
    return VariantResponse(
        k=k,
        slot_p=slot_p,
        misses=(~hit & (lists >= 0)).sum(axis=1),
        hit_person=person,
        hit_p=p_hit[slot],
    )


def simulate_counts(
    population: Population,
    responses: list[VariantResponse],
    arms: np.ndarray,
    model: ResponseModel,
    rng: np.random.Generator,
) -> PersonCounts:
    """One window of every person's counts, each person shown the lists of their arm
    (``arms[i]`` indexes ``responses``): vectorised over people. A missed slot engages with
    probability ``base`` and else is marked not interested with probability
    ``not_interested / (1 − base)`` (so the two are exclusive and the marginal rate is
    ``not_interested``)."""
    sessions = rng.poisson(population.activity)
    k = responses[0].k
    misses = np.zeros(population.size, np.int64)
    engaged = np.zeros(population.size, np.int64)
    for a, response in enumerate(responses):
        mine = arms == a
        misses[mine] = response.misses[mine]
        sel = mine[response.hit_person]
        people = response.hit_person[sel]
        draws = rng.binomial(sessions[people], response.hit_p[sel])
        engaged += np.bincount(people, weights=draws, minlength=population.size).astype(np.int64)
    missed = sessions * misses
    engaged_missed = rng.binomial(missed, model.base)
    rest = min(1.0, model.not_interested / (1 - model.base)) if model.base < 1 else 0.0
    not_interested = rng.binomial(missed - engaged_missed, rest)
    engaged += engaged_missed
    organic = rng.poisson(model.organic * sessions)
    return PersonCounts(
        sessions=sessions,
        impressions=sessions * k,
        engaged=engaged,
        positives=engaged + organic,
        not_interested=not_interested,
    )


def simulate_windows(
    population: Population,
    responses: list[VariantResponse],
    arms: np.ndarray,
    model: ResponseModel,
    rng: np.random.Generator,
    *,
    windows: int,
) -> list[PersonCounts]:
    """``windows`` independent windows of every person's counts (module docstring), each
    drawn as :func:`simulate_counts` draws one."""
    if isinstance(windows, bool) or not isinstance(windows, int) or windows < 1:
        raise ValueError(f"windows must be a positive integer (got {windows!r})")
    return [simulate_counts(population, responses, arms, model, rng) for _ in range(windows)]


def cumulative_counts(windows: list[PersonCounts]) -> list[PersonCounts]:
    """The running sums of per-window counts: entry ``k`` holds the counts over windows
    ``0 … k`` (counts are additive)."""
    if not windows:
        raise ValueError("windows must hold at least one window's counts")
    fields = [f for f in PersonCounts.__dataclass_fields__ if getattr(windows[0], f) is not None]
    running = {f: np.cumsum([getattr(w, f) for w in windows], axis=0) for f in fields}
    return [PersonCounts(**{f: running[f][k] for f in fields}) for k in range(len(windows))]


def true_means(
    population: Population,
    responses: list[VariantResponse],
    model: ResponseModel,
    bounds: MetricBounds,
) -> np.ndarray:
    """Each variant's true value of every metric (module docstring), shape
    ``(variants, len(METRICS))``, in the metrics' units."""
    lam = population.activity
    exposed = 1.0 - np.exp(-lam)
    s = np.arange(1, bounds.max_sessions + 1)
    pmf = stats.poisson.pmf(s[None, :], lam[:, None])
    tail = stats.poisson.sf(bounds.max_sessions, lam)
    sessions = (pmf @ s + tail * bounds.max_sessions) / exposed
    out = np.empty((len(responses), len(METRICS)))
    for v, r in enumerate(responses):
        engagement = r.slot_p.sum(axis=1) / r.k
        positive = np.minimum(r.k * engagement + model.organic, bounds.max_positive_rate)
        rejected = r.misses * model.not_interested / r.k
        values = np.stack([sessions, engagement, positive, rejected], axis=1)
        out[v] = exposed @ values / exposed.sum()
    return out
