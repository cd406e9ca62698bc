"""Candidate generation on the device: generators behind one protocol, merged.

Each generator proposes up to its budget of catalogue rows with a score, from what the
device holds: the installed release (item factors, catalogue, popularity, trending
counts) and the person's history. Nothing it reads or computes leaves the device.

Registered generators (``GENERATORS``; :func:`register_generator` adds one):

- ``cf``: the release model's scores of the user vector against every item (the device's
  own scorer: the int8 table when the release ships one);
- ``content``: cosine between each item's genre/tag vector and the person's profile, a
  recency-weighted mean of the features of what they engaged with minus that of what
  they rejected (half-life a setting);
- ``trending``: the release's privately aggregated trending counts;
- ``fresh``: the newest items by first-seen time;
- ``popular``: the release's popularity, for a person with no history yet.

:func:`generate` runs the generators, merges and de-duplicates their proposals; each
candidate keeps which generators proposed it and with what score (``Candidates.scores``,
NaN where a generator did not propose it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from stamen.client.pipeline.genre_matrix import GenreMatrix
from stamen.models.bundle import ReleaseCatalog
from stamen.models.item_index import ApproximateIndex

__all__ = [
    "GENERATORS",
    "STATIC",
    "ApproximateScores",
    "Candidates",
    "ReleaseIndex",
    "Generator",
    "Request",
    "content_profile",
    "generate",
    "register_generator",
    "cf_scores_of",
    "top_rows",
]


#: The generators whose lists depend on the release alone (sorted once per release).
STATIC = ("fresh", "trending", "popular")


class ReleaseIndex:
    """What the generators read of an installed release, built once per release: the
    catalogue, its items x genres (or tags) matrix and each item's vector norm,
    popularity, trending counts (``None``: the release carries none), and each static
    list (fresh, trending, popular) sorted once, so that a request only skips the
    person's own items instead of ranking the catalogue again."""

    def __init__(
        self, catalog: ReleaseCatalog, popularity: np.ndarray, trending: np.ndarray | None
    ) -> None:
        self.catalog = catalog
        self.popularity = np.asarray(popularity, np.float64)
        self.trending = None if trending is None else np.asarray(trending, np.float64)
        self.genres = GenreMatrix(
            catalog.genre_indptr, catalog.genre_index, len(catalog.genre_names)
        )
        self.norms = np.sqrt(self.genres.counts().astype(np.float64))
        self._sorted: dict[str, tuple[np.ndarray, np.ndarray | None, bool]] = {}
        # items grouped by genre set (a content score depends on nothing else): a request
        # scores each group once instead of every item
        self.group_of, self.group_indptr, self.group_members = catalog.genre_groups
        first = self.group_members[self.group_indptr[:-1]]
        self.group_genres, self.group_norms = self.genres.take(first), self.norms[first]
        self.group_sizes: np.ndarray = np.diff(np.asarray(self.group_indptr, np.int64))

    def static_top(
        self, name: str, budget: int, excluded: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``budget`` best rows of the release-static list ``name`` (:data:`STATIC`;
        best first, ties by row; non-finite scores never) outside ``excluded``. The head
        of each list is sorted once and lengthened when a request needs more of it."""
        need = budget + len(excluded)  # enough to fill the budget after skipping
        rows, values, complete = self._sorted.get(name, (np.zeros(0, np.int64), None, False))
        if values is None or (len(rows) < need and not complete):
            rows, values, complete = _sorted_head(
                self._static_scores(name), max(need, 2 * len(rows), 1024)
            )
            self._sorted[name] = (rows, values, complete)
        keep = ~_among(rows[:need], excluded)
        return rows[:need][keep][:budget].astype(np.int64), values[:need][keep][:budget]

    def warm(self) -> None:
        """Sort the head of every static list now rather than in the first request (an
        ``apply_release`` does it before it swaps the release in, outside the device's
        lock)."""
        for name in STATIC:
            if name != "trending" or self.trending is not None:
                self.static_top(name, 0, np.zeros(0, np.int64))

    def _static_scores(self, name: str) -> np.ndarray:
        """The scores of static list ``name`` over the catalogue (float64; non-finite:
        never listed)."""
        if name == "popular":
            return self.popularity
        if name == "trending":  # zero counts: nobody, so not trending
            assert self.trending is not None
            return np.where(self.trending > 0, self.trending, -np.inf)
        if name == "fresh":  # negative: first-seen time unknown
            first_seen = np.asarray(self.catalog.first_seen, np.float64)
            return np.where(first_seen >= 0, first_seen, -np.inf)
        raise ValueError(f"no static list {name!r}; known: {list(STATIC)}")


def _among(rows: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Whether each of ``rows`` is one of ``members`` (``np.isin``'s answer by a sorted
    search, which costs a request's few rows and exclusions far less than its set
    operations)."""
    members = np.sort(np.asarray(members).ravel())
    rows = np.asarray(rows)
    if not len(members):
        return np.zeros(rows.shape, bool)
    found = members[np.minimum(np.searchsorted(members, rows), len(members) - 1)]
    return found == rows


def _sorted_head(values: np.ndarray, head: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """The ``head`` best rows of ``values`` in order (best first, ties by row; non-finite
    values never), their values, and whether that is every finite row: what sorting
    them all gives, at the cost of a partition and a sort of the head."""
    rows = np.flatnonzero(np.isfinite(values))
    if len(rows) > head:  # every row tied with the head's last value, then the head of those
        threshold = -np.partition(-values[rows], head - 1)[head - 1]
        rows = rows[values[rows] >= threshold]
    rows = rows[np.lexsort((rows, -values[rows]))][:head]
    complete = len(rows) == int(np.isfinite(values).sum())
    return rows, values[rows], complete


class ApproximateScores:
    """The release model's scores for one user vector through the release's approximate
    item index (``stamen.models.item_index``): the best items as the index finds them,
    scored exactly, and any item's exact score on demand; the catalogue is never scored
    whole."""

    def __init__(self, index: ApproximateIndex, vector: np.ndarray) -> None:
        self.index, self.vector = index, np.asarray(vector, np.float32)

    def top(self, budget: int, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ``budget`` best rows outside ``excluded`` and their scores, best first."""
        rows, scores = self.index.search(self.vector, budget + len(excluded))
        keep = ~_among(rows, excluded)
        return rows[keep][:budget], scores[keep][:budget].astype(np.float64)

    def at(self, rows: np.ndarray) -> np.ndarray:
        """The exact scores of ``rows``."""
        return self.index.scores(rows, self.vector).astype(np.float64)


@dataclass(frozen=True)
class Request:
    """What the generators see of one recommendation request (all of it on the device).

    ``history``/``history_at``: the person's items (latest event positive) and the times
    of those events; ``rejected``/``rejected_at`` the same for negative feedback;
    ``excluded``: rows never to propose (consumed and rejected); ``cf_scores``: the release
    model's score of every item for this person (or, for a release with an approximate
    item index, :class:`ApproximateScores`), ``None`` without a user vector.
    """

    index: ReleaseIndex
    cf_scores: np.ndarray | ApproximateScores | None
    history: np.ndarray
    history_at: np.ndarray
    rejected: np.ndarray
    rejected_at: np.ndarray
    excluded: np.ndarray
    now: float
    context: Mapping[str, Any]
    content_half_life_s: float = 30 * 86400.0

    def allows(self, rows: np.ndarray) -> np.ndarray:
        """Which of ``rows`` are not ``excluded``."""
        return ~_among(rows, self.excluded)

    @functools.cached_property
    def profile(self) -> np.ndarray:
        """The person's genre profile (:func:`content_profile`), worked out once per
        request (read-only)."""
        genres = self.index.genres
        times = np.concatenate([self.history_at, self.rejected_at])
        latest = float(times.max()) if len(times) else self.now

        def weighted(rows: np.ndarray, at: np.ndarray) -> np.ndarray:
            if not len(rows):
                return np.zeros(genres.shape[1])
            # ages from the person's latest event, not from now: each part is a weighted
            # mean, so the common reference cancels, and old histories do not underflow
            age = np.maximum(latest - np.asarray(at, np.float64), 0.0)
            weights = 0.5 ** (age / self.content_half_life_s)
            return genres.take(rows).tdot(weights) / max(weights.sum(), 1e-12)

        profile = weighted(self.history, self.history_at) - weighted(
            self.rejected, self.rejected_at
        )
        profile.setflags(write=False)
        return profile


class Generator(Protocol):
    """Proposes up to ``budget`` catalogue rows for ``request``, with their scores."""

    def __call__(self, request: Request, budget: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and scores, best first."""
        ...


#: Generator name -> generator (``register_generator`` adds one).
GENERATORS: dict[str, Generator] = {}


def register_generator(name: str) -> Callable[[Generator], Generator]:
    """Register ``generator`` under ``name`` (a plug-in point: the two-tower model, a
    partner feed, …)."""

    def add(generator: Generator) -> Generator:
        if name in GENERATORS:
            raise ValueError(f"a candidate generator {name!r} is already registered")
        GENERATORS[name] = generator
        return generator

    return add


def top_rows(
    scores: np.ndarray, budget: int, excluded: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The ``budget`` best rows of ``scores`` (non-finite and ``excluded`` rows never),
    best first, and their scores (float64); ties broken by row, so the result is
    deterministic. Float scores are read in their own precision (no float64 copy of the
    catalogue's)."""
    scores = np.asarray(scores)
    if scores.dtype.kind != "f":
        scores = scores.astype(np.float64)
    if budget <= 0:
        return np.zeros(0, np.int64), np.zeros(0)
    want = budget + len(excluded)
    head = None
    if want < len(scores):
        # the rows at or above a floor that ``want`` rows reach hold the answer (unless
        # non-finite or excluded rows crowd it out): the ``want``-th largest of the maxima
        # of ``4 * want`` strided groups of rows is such a floor, at the cost of a pass
        groups = min(4 * want, len(scores))
        depth = len(scores) // groups
        maxima = scores[: depth * groups].reshape(depth, groups).max(axis=0)
        head = np.flatnonzero(scores >= np.partition(maxima, groups - want)[groups - want])
        if len(head) > want:  # the rows at or above the ``want``-th largest of the head
            floor = np.partition(scores[head], len(head) - want)[len(head) - want]
            head = head[scores[head] >= floor]
        head = head[np.isfinite(scores[head]) & ~_among(head, excluded)]
        if len(head) < budget:
            head = None
    if head is None:  # every finite row outside ``excluded``
        allowed = np.isfinite(scores)
        allowed[np.asarray(excluded, np.int64)] = False
        head = np.flatnonzero(allowed)
    order = np.lexsort((head, -scores[head]))[:budget]
    rows = head[order].astype(np.int64)
    return rows, scores[rows].astype(np.float64)


@register_generator("cf")
def _cf(request: Request, budget: int) -> tuple[np.ndarray, np.ndarray]:
    if request.cf_scores is None:
        return np.zeros(0, np.int64), np.zeros(0)
    if isinstance(request.cf_scores, ApproximateScores):
        return request.cf_scores.top(budget, request.excluded)
    return top_rows(request.cf_scores, budget, request.excluded)


def cf_scores_of(request: Request, rows: np.ndarray) -> np.ndarray | None:
    """The release model's scores of ``rows`` for the request's person (float64), ``None``
    without a user vector."""
    if request.cf_scores is None:
        return None
    if isinstance(request.cf_scores, ApproximateScores):
        return request.cf_scores.at(rows)
    return np.asarray(request.cf_scores)[rows].astype(np.float64)


def content_profile(request: Request) -> np.ndarray:
    """The person's genre profile: recency-weighted mean of their items' genre vectors
    minus that of their rejected items (weights halve every ``content_half_life_s``);
    worked out once per request (``Request.profile``), read-only."""
    return request.profile


@register_generator("content")
def _content(request: Request, budget: int) -> tuple[np.ndarray, np.ndarray]:
    profile = content_profile(request)
    norm = np.linalg.norm(profile)
    if norm == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    index = request.index
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = index.group_genres.dot(profile) / (index.group_norms * norm)
    # an item sharing nothing with the profile is no content match
    groups = np.flatnonzero((index.group_norms > 0) & (cosine > 0))
    # enough groups, best first, to fill the budget past the excluded rows, and every
    # group tied with the last one taken (ties are broken by row, across groups, so the
    # order among tied groups changes nothing)
    best = np.argsort(-cosine[groups])
    cut = int(
        np.searchsorted(np.cumsum(index.group_sizes[groups[best]]), budget + len(request.excluded))
    )
    if cut < len(groups):
        groups = groups[cosine[groups] >= cosine[groups[best[cut]]]]
    # their members in one gather (member j of group g sits at ``group_indptr[g] + j``)
    sizes = index.group_sizes[groups]
    ends = np.cumsum(sizes)
    at = np.repeat(index.group_indptr[groups] - (ends - sizes), sizes)
    rows = index.group_members[at + np.arange(len(at))]
    rows = rows[request.allows(rows)]
    scores = cosine[index.group_of[rows]]
    order = np.lexsort((rows, -scores))[:budget]
    return rows[order], scores[order]


@register_generator("trending")
def _trending(request: Request, budget: int) -> tuple[np.ndarray, np.ndarray]:
    if request.index.trending is None:
        return np.zeros(0, np.int64), np.zeros(0)
    return request.index.static_top("trending", budget, request.excluded)


@register_generator("fresh")
def _fresh(request: Request, budget: int) -> tuple[np.ndarray, np.ndarray]:
    return request.index.static_top("fresh", budget, request.excluded)


@register_generator("popular")
def _popular(request: Request, budget: int) -> tuple[np.ndarray, np.ndarray]:
    if len(request.history):  # the fallback for a person the device knows nothing of
        return np.zeros(0, np.int64), np.zeros(0)
    return request.index.static_top("popular", budget, request.excluded)


@dataclass(frozen=True)
class Candidates:
    """Merged proposals: unique catalogue ``rows``; ``scores[i, g]`` the score generator
    ``names[g]`` gave row ``i`` (NaN: not proposed by it)."""

    rows: np.ndarray
    names: tuple[str, ...]
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def proposed(self, name: str) -> np.ndarray:
        """Which candidates generator ``name`` proposed."""
        return ~np.isnan(self.scores[:, self.names.index(name)])

    def ranks(self) -> np.ndarray:
        """``ranks[i, g]``: candidate i's position (from 0) in generator g's list, best
        score first and ties by row (inf: not in it); worked out once, read-only."""
        return self._ranks

    @functools.cached_property
    def _ranks(self) -> np.ndarray:
        # every generator's list in one sort: by generator, then best score, then row
        generator, candidate = np.nonzero(~np.isnan(self.scores.T))
        scores = self.scores[candidate, generator]
        order = np.lexsort((self.rows[candidate], -scores, generator))
        generator, candidate = generator[order], candidate[order]
        starts = np.searchsorted(generator, np.arange(len(self.names)))
        ranks = np.full(self.scores.shape, np.inf)
        ranks[candidate, generator] = np.arange(len(order)) - starts[generator]
        ranks.setflags(write=False)
        return ranks

    def proposals(self, i: int) -> dict[str, float]:
        """The generators that proposed candidate ``i``, with the score each gave it."""
        return {
            name: v
            for name, v in zip(self.names, self.scores[i].tolist(), strict=True)
            if v == v  # not NaN
        }


def generate(request: Request, budgets: Mapping[str, int]) -> Candidates:
    """Run the generators named in ``budgets`` (each up to its budget), merge and
    de-duplicate; candidates in the order first proposed (generators in ``budgets``'
    order, each best first)."""
    unknown = sorted(set(budgets) - set(GENERATORS))
    if unknown:
        raise ValueError(f"unknown candidate generators {unknown}; known: {sorted(GENERATORS)}")
    names: Sequence[str] = tuple(budgets)
    proposals = [GENERATORS[name](request, int(budgets[name])) for name in names]
    rows = np.concatenate([r for r, _ in proposals]) if proposals else np.zeros(0, np.int64)
    rows = rows.astype(np.int64)
    by_row = np.argsort(rows, kind="stable")  # equal rows together, first proposal first
    new = np.ones(len(rows), bool)  # where a row first appears in ``by_row``
    np.not_equal(rows[by_row[1:]], rows[by_row[:-1]], out=new[1:])
    first = by_row[new]  # each distinct row's first proposal, in row order
    order = np.argsort(first)  # candidates in the order first proposed
    candidate_of = np.empty(len(order), np.int64)
    candidate_of[order] = np.arange(len(order))
    position = np.empty(len(rows), np.int64)  # each proposal's candidate
    position[by_row] = candidate_of[np.cumsum(new) - 1]
    scores = np.full((len(first), len(names)), np.nan)
    start = 0
    for g, (proposed, values) in enumerate(proposals):
        scores[position[start : start + len(proposed)], g] = values
        start += len(proposed)
    return Candidates(rows[first[order]], tuple(names), scores)
