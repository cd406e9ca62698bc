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
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from stamen.client.pipeline.candidates import (
    GENERATORS,
    Candidates,
    Request,
    content_profile,
    generate,
)
from stamen.client.pipeline.ranking import candidate_features
from stamen.client.pipeline.rerank import Slot, rerank
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


class PipelineSettings(BaseModel):
    """Budgets of the candidate generators and the re-ranker's settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    budgets: dict[str, int] = Field(
        default_factory=lambda: {name: budget for name, (budget, _) in _GENERATOR_DEFAULTS.items()},
        description="candidate generator -> how many it proposes "
        "(stamen.client.pipeline.candidates)",
    )
    weights: dict[str, float] = Field(
        default_factory=lambda: {name: weight for name, (_, weight) in _GENERATOR_DEFAULTS.items()},
        description="rank fusion weight of each generator's list (missing: 1)",
    )
    rrf_k: float = Field(60.0, gt=0, description="reciprocal rank fusion constant")
    ranker: bool = Field(
        True, description="order candidates by the release's ranker when it carries one"
    )
    ranker_depth: int = Field(
        100,
        ge=1,
        description="the ranker re-orders this many of the best candidates by rank fusion; "
        "the rest follow them in fused order",
    )
    mmr_lambda: float = Field(
        0.9, ge=0, le=1, description="MMR: weight of relevance against similarity (1: none)"
    )
    diversity: Literal["genres", "embeddings"] = Field(
        "genres",
        description="what MMR compares: the items' genre/tag vectors (the model's item "
        "embeddings when the catalogue has no genres) or the model's item embeddings",
    )
    genre_cap: int | None = Field(None, ge=1, description="most items of one genre in a list")
    launch_window_days: float = Field(7.0, ge=0, description="an item this new counts as new")
    freshness_boost: float = Field(0.0, ge=0, description="added to a new item's relevance")
    explore: float = Field(0.0, ge=0, le=1, description="ε-greedy exploration rate per slot")
    content_half_life_days: float = Field(
        30.0, gt=0, description="the content profile halves an event's weight this often"
    )

    @classmethod
    def retrieval_only(cls, budget: int = 1000) -> PipelineSettings:
        """Collaborative filtering alone (popularity for a person with no history): the
        release model's own order, no diversity, exploration or freshness."""
        return cls(budgets={"cf": budget, "popular": budget}, mmr_lambda=1.0, ranker=False)

    @field_validator("budgets", "weights")
    @classmethod
    def _known(cls, values: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(values) - set(GENERATORS))
        if unknown:
            raise ValueError(f"unknown candidate generators {unknown}; known: {sorted(GENERATORS)}")
        if any(v < 0 for v in values.values()):
            raise ValueError("candidate budgets and weights must be non-negative")
        return values


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
    allowed = ~np.isin(rows, request.excluded) & ~np.isin(rows, blocked)
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
    catalogue has thousands) or the model's item embeddings."""
    if not len(rows):
        return np.zeros((0, 1))
    genres = request.index.genres
    if settings.diversity == "genres" and genres.shape[1]:
        return genres.take(rows).dense()
    return embeddings(rows)


def _available(regions: tuple[str, ...], region: str) -> bool:
    return not regions or region in regions


def _earner(candidates: Candidates, ranks: np.ndarray, i: int, settings: PipelineSettings) -> str:
    """The generator that contributed most to candidate ``i``'s fused relevance (with no
    weighted contribution: the one that ranked it highest)."""
    w = np.array([settings.weights.get(name, 1.0) for name in candidates.names])
    share = np.where(np.isfinite(ranks[i]), w / (settings.rrf_k + 1.0 + ranks[i]), 0.0)
    if share.max() > 0:
        return candidates.names[int(np.argmax(share))]
    return candidates.names[int(np.argmin(ranks[i]))]


def _with_reasons(
    slots: list[Slot],
    candidates: Candidates,
    request: Request,
    because: Callable[[np.ndarray], Sequence[str]],
    fresh: np.ndarray,
    settings: PipelineSettings,
) -> list[Pick]:
    ranks = candidates.ranks()
    earned = [
        "explore" if s.explored else _earner(candidates, ranks, s.candidate, settings)
        for s in slots
    ]
    rows = np.array([candidates.rows[s.candidate] for s in slots], np.int64)
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
