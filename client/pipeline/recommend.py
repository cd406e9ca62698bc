"""The on-device recommendation pipeline: candidates → relevance → re-ranking → reasons.

``Device.recommend`` runs it from the installed release and the person's history; nothing
about the person leaves the device. Stages:

1. **Candidates** (``stamen.client.pipeline.candidates``): every generator in
   ``PipelineSettings.budgets`` proposes up to its budget; proposals are merged.
2. **Relevance**: weighted reciprocal rank fusion of the generators' lists (Cormack et
   al., 2009): ``Σ_g w_g / (rrf_k + rank_g)`` over the generators that proposed the item
   (ranks from 1). When the release carries a ranker (``stamen.models.ranker.weights``) and
   ``PipelineSettings.ranker`` is on, it re-orders the ``ranker_depth`` best of them by
   their features (``stamen.client.pipeline.ranking``), ahead of the rest (a cascade: the
   ranker sees the head of the first stage, in training and in serving alike).
3. **Re-ranking** (``stamen.client.pipeline.rerank``): rules, freshness, MMR diversity, genre
   cap, exploration with logged propensities.
4. **Reasons**, from the stage that earned the slot: the generator that ranked the item
   highest ("Because you watched Heat (1995)", "Matches your interest in Sci-Fi",
   "Popular this week", "New this week", "Popular right now"), or "Something different"
   for exploration.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from stamen.client.pipeline.candidates import (
    GENERATORS,
    Candidates,
    Request,
    content_profile,
    generate,
)
from stamen.client.pipeline.ranking import candidate_features
from stamen.client.pipeline.rerank import Slot, rerank
from stamen.dataclass_settings import DataclassSettings
from stamen.models.bundle import ReleaseCatalog
from stamen.models.ranker.weights import ranker_scores

__all__ = [
    "Pick",
    "PipelineSettings",
    "REASONS",
    "fused_relevance",
    "offered_example",
    "ranker_head",
    "run_pipeline",
]

_DAY = 86400.0

#: Fixed reasons by the stage that earned a slot (``cf`` and ``content`` name the item).
REASONS = {
    "trending": "Popular this week",
    "fresh": "New this week",
    "popular": "Popular right now",
    "explore": "Something different",
}


#: Each generator's default budget (how many candidates it proposes) and rank fusion weight.
#: The weights were chosen on MovieLens-100K validation (benchmarks/results/pipeline-ml-100k.md):
#: any weight on the content and fresh lists cost NDCG there; their candidates still reach a
#: list through MMR, the rules and exploration.
_GENERATOR_DEFAULTS = {
    "cf": (200, 1.0),
    "content": (100, 0.0),
    "trending": (50, 0.0),
    "fresh": (20, 0.0),
    "popular": (100, 1.0),
}


def _default_budgets() -> dict[str, int]:
    return {name: budget for name, (budget, _) in _GENERATOR_DEFAULTS.items()}


def _default_weights() -> dict[str, float]:
    return {name: weight for name, (_, weight) in _GENERATOR_DEFAULTS.items()}


@dataclass(frozen=True)
class PipelineSettings(DataclassSettings):
    """Budgets of the candidate generators and the re-ranker's settings (a dataclass
    checked on construction, without pydantic: ``stamen.dataclass_settings``; a bad value
    raises ``ConfigError`` naming every problem)."""

    budgets: dict[str, int] = field(
        default_factory=_default_budgets,
        metadata={
            "ge": 0,
            "description": "candidate generator -> how many it proposes "
            "(stamen.client.pipeline.candidates)",
        },
    )
    weights: dict[str, float] = field(
        default_factory=_default_weights,
        metadata={
            "ge": 0,
            "description": "rank fusion weight of each generator's list (missing: 1)",
        },
    )
    rrf_k: float = field(
        default=60.0, metadata={"gt": 0, "description": "reciprocal rank fusion constant"}
    )
    ranker: bool = field(
        default=True,
        metadata={"description": "order candidates by the release's ranker when it carries one"},
    )
    ranker_depth: int = field(
        default=100,
        metadata={
            "ge": 1,
            "description": "the ranker re-orders this many of the best candidates by rank "
            "fusion; the rest follow them in fused order",
        },
    )
    mmr_lambda: float = field(
        default=0.9,
        metadata={
            "ge": 0,
            "le": 1,
            "description": "MMR: weight of relevance against similarity (1: none)",
        },
    )
    diversity: Literal["genres", "embeddings"] = field(
        default="genres",
        metadata={
            "description": "what MMR compares: the items' genre/tag vectors (the model's item "
            "embeddings when the catalogue has no genres) or the model's item embeddings"
        },
    )
    genre_cap: int | None = field(
        default=None, metadata={"ge": 1, "description": "most items of one genre in a list"}
    )
    launch_window_days: float = field(
        default=7.0, metadata={"ge": 0, "description": "an item this new counts as new"}
    )
    freshness_boost: float = field(
        default=0.0, metadata={"ge": 0, "description": "added to a new item's relevance"}
    )
    explore: float = field(
        default=0.0,
        metadata={"ge": 0, "le": 1, "description": "ε-greedy exploration rate per slot"},
    )
    content_half_life_days: float = field(
        default=30.0,
        metadata={
            "gt": 0,
            "description": "the content profile halves an event's weight this often",
        },
    )

    @classmethod
    def retrieval_only(cls, budget: int = 1000) -> PipelineSettings:
        """Collaborative filtering alone (popularity for a person with no history): the
        release model's own order, no diversity, exploration or freshness."""
        return cls(budgets={"cf": budget, "popular": budget}, mmr_lambda=1.0, ranker=False)

    def _problems(self) -> list[str]:
        return [
            f"{name}: unknown candidate generators {unknown}; known: {sorted(GENERATORS)}"
            for name in ("budgets", "weights")
            if (unknown := sorted(set(getattr(self, name)) - set(GENERATORS)))
        ]


@dataclass(frozen=True)
class Pick:
    """One recommended catalogue row: its relevance, the stage that earned it
    (a generator's name or ``"explore"``), the reason, the propensity of showing it, and
    the score each generator that proposed it gave it."""

    row: int
    score: float
    source: str
    reason: str
    propensity: float
    scores: dict[str, float]


def fused_relevance(
    candidates: Candidates, rrf_k: float, weights: Mapping[str, float] | None = None
) -> np.ndarray:
    """Weighted reciprocal rank fusion of the generators' lists (ranks from 1; a
    generator missing from ``weights`` weighs 1)."""
    ranks = candidates.ranks()
    w = np.array([(weights or {}).get(name, 1.0) for name in candidates.names])
    return (np.where(np.isfinite(ranks), 1.0 / (rrf_k + 1.0 + ranks), 0.0) * w).sum(axis=1)


def ranker_head(relevance: np.ndarray, depth: int) -> np.ndarray:
    """Indices of the ``depth`` candidates of highest fused ``relevance`` (ties: the
    earlier candidate), best first: what the ranker re-orders."""
    order = np.lexsort((np.arange(len(relevance)), -np.asarray(relevance)))
    return order[:depth]


def offered_example(
    request: Request, settings: PipelineSettings, taken: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """A training example for the ranker: the features of the list it would re-order for
    ``request`` (the head of the candidates ``settings`` generates, as
    :func:`run_pipeline` forms it), and which of them are among the rows ``taken``
    afterwards. ``None`` when the head holds none of them (nothing to learn which
    candidate wins)."""
    candidates = generate(request, settings.budgets)
    relevance = fused_relevance(candidates, settings.rrf_k, settings.weights)
    head = ranker_head(relevance, settings.ranker_depth)
    took = np.isin(candidates.rows[head], np.asarray(taken, np.int64))
    if not took.any():
        return None
    return candidate_features(candidates, request, head), took


def run_pipeline(
    request: Request,
    settings: PipelineSettings,
    k: int,
    *,
    vectors: Callable[[np.ndarray], np.ndarray],
    because: Callable[[np.ndarray], Sequence[str]],
    blocked: np.ndarray,
    region: str | None,
    rng: np.random.Generator | None,
    ranker: list[np.ndarray] | None = None,
) -> list[Pick]:
    """The ``k`` picks for ``request`` (see module docstring). ``ranker``: the release's
    ranker weights (``None``: rank fusion orders the candidates). ``vectors(rows)`` gives the
    model's item embeddings (what MMR compares under ``diversity="embeddings"`` or for a
    catalogue without genres); ``because(rows)`` the "Because you …" reasons of
    collaborative-filtering picks; ``blocked`` rows the app excludes; ``region`` the
    request's region (``None``: no availability rule).

    Fewer than ``k`` picks come back only when fewer items are eligible: when the
    generators' budgets run out first (a large ``k``), they are widened to the whole
    catalogue and the pipeline runs again."""
    size = len(request.index.catalog)
    widened = {name: size if budget > 0 else 0 for name, budget in settings.budgets.items()}
    for budgets in (settings.budgets, widened):
        picks = _picks(
            request, settings, budgets, k, vectors, because, blocked, region, rng, ranker
        )
        if len(picks) == k or budgets == widened:
            return picks
    return picks


def _picks(
    request: Request,
    settings: PipelineSettings,
    budgets: Mapping[str, int],
    k: int,
    vectors: Callable[[np.ndarray], np.ndarray],
    because: Callable[[np.ndarray], Sequence[str]],
    blocked: np.ndarray,
    region: str | None,
    rng: np.random.Generator | None,
    ranker: list[np.ndarray] | None,
) -> list[Pick]:
    """One pass of the pipeline with the generators' ``budgets``."""
    candidates = generate(request, budgets)
    rows = candidates.rows
    catalog = request.index.catalog
    allowed = request.allows(rows)
    if len(blocked):
        allowed &= ~np.isin(rows, blocked)
    if region is not None and catalog.region_indptr is not None:
        allowed &= np.array([_available(catalog.regions(int(r)), region) for r in rows], bool)
    first_seen = np.asarray(catalog.first_seen[rows], np.float64)
    window = settings.launch_window_days * _DAY
    fresh = (first_seen >= 0) & (request.now - first_seen <= window)  # negative: unknown
    # each candidate's genres, for the genre cap (nothing else in re-ranking reads them)
    genres: list[tuple[int, ...]] = (
        _genre_lists(catalog, rows) if settings.genre_cap is not None else [()] * len(rows)
    )
    relevance = fused_relevance(candidates, settings.rrf_k, settings.weights)
    if ranker is not None and settings.ranker:
        head = ranker_head(relevance, settings.ranker_depth)
        scores = ranker_scores(ranker, candidate_features(candidates, request, head))
        # the head above the rest, in the ranker's order; all of it on [0, ∞) like fused
        # relevance (rerank scales by the largest value)
        tail = np.delete(relevance, head).max(initial=0.0)
        relevance[head] = tail + 1e-9 + scores - scores.min(initial=0.0)
    slots = rerank(
        relevance,
        _diversity_vectors(request, settings, rows, vectors),
        k,
        allowed=allowed,
        genres=genres,
        fresh=fresh,
        lam=settings.mmr_lambda,
        freshness_boost=settings.freshness_boost,
        genre_cap=settings.genre_cap,
        explore=settings.explore,
        rng=rng,
    )
    return _with_reasons(slots, candidates, request, because, fresh, settings)


def _genre_lists(catalog: ReleaseCatalog, rows: np.ndarray) -> list[tuple[int, ...]]:
    """Each row's genre ids, gathered in one indexing of the catalogue's CSR columns."""
    starts = np.asarray(catalog.genre_indptr[rows], np.int64)
    lengths = np.asarray(catalog.genre_indptr[rows + 1], np.int64) - starts
    ends = np.cumsum(lengths)
    gather = np.repeat(starts - (ends - lengths), lengths) + np.arange(int(ends[-1:].sum()))
    flat, bounds = catalog.genre_index[gather].tolist(), [0, *ends.tolist()]
    return [tuple(flat[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _diversity_vectors(
    request: Request,
    settings: PipelineSettings,
    rows: np.ndarray,
    embeddings: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """What MMR compares: the candidates' genre/tag rows (over the columns they use: a tag
    catalogue has thousands) or the model's item embeddings; nothing (no columns) when
    λ = 1 turns MMR off."""
    if settings.mmr_lambda >= 1:
        return np.zeros((len(rows), 0))
    if not len(rows):
        return np.zeros((0, 1))
    genres = request.index.genres
    if settings.diversity == "genres" and genres.shape[1]:
        return genres.take(rows).dense()
    return embeddings(rows)


def _available(regions: tuple[str, ...], region: str) -> bool:
    return not regions or region in regions


def _earners(candidates: Candidates, which: np.ndarray, settings: PipelineSettings) -> list[str]:
    """The generator that contributed most to each of candidates ``which``'s fused
    relevance (with no weighted contribution: the one that ranked it highest)."""
    if not len(which):
        return []
    ranks = candidates.ranks()[which]
    w = np.array([settings.weights.get(name, 1.0) for name in candidates.names])
    share = np.where(np.isfinite(ranks), w / (settings.rrf_k + 1.0 + ranks), 0.0)
    best = np.where(share.max(axis=1) > 0, np.argmax(share, axis=1), np.argmin(ranks, axis=1))
    return [candidates.names[g] for g in best.tolist()]


def _with_reasons(
    slots: list[Slot],
    candidates: Candidates,
    request: Request,
    because: Callable[[np.ndarray], Sequence[str]],
    fresh: np.ndarray,
    settings: PipelineSettings,
) -> list[Pick]:
    picked = np.array([s.candidate for s in slots], np.int64)
    earned = [
        "explore" if s.explored else source
        for s, source in zip(slots, _earners(candidates, picked, settings), strict=True)
    ]
    rows = candidates.rows[picked]
    reasons = [REASONS.get(source, "") for source in earned]
    for i, (s, source) in enumerate(zip(slots, earned, strict=True)):
        if source == "fresh" and not fresh[s.candidate]:
            reasons[i] = "New in the catalogue"  # newest there is, older than the window
    cf = [i for i, source in enumerate(earned) if source == "cf"]
    for i, reason in zip(cf, because(rows[cf]) if cf else (), strict=True):
        reasons[i] = reason
    content = [i for i, source in enumerate(earned) if source == "content"]
    if content:
        genres = request.index.genres
        profile = content_profile(request)
        names = request.index.catalog.genre_names
        for i in content:
            own = genres.row(int(rows[i]))
            reasons[i] = f"Matches your interest in {names[own[np.argmax(profile[own])]]}"
    return [
        Pick(int(r), s.relevance, source, reason, s.propensity, candidates.proposals(s.candidate))
        for r, s, source, reason in zip(rows, slots, earned, reasons, strict=True)
    ]
