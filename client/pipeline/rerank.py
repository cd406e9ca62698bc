"""Re-ranking on the device: business rules, freshness, diversity, exploration.

:func:`rerank` fills the list slot by slot from the candidates, greedily:

1. **Rules** remove candidates outright: items already consumed or rejected, items the
   app blocks, items not available in the request's region (an item with no regions in
   the catalogue is available everywhere).
2. **Freshness**: items first seen inside the launch window get ``freshness_boost`` added
   to their relevance (relevance is scaled to [0, 1] first).
3. **Diversity** by maximal marginal relevance: the next item maximises
   ``λ·relevance − (1 − λ)·max cosine to the items already chosen`` (Carbonell and
   Goldstein, 1998); λ = 1 is relevance order. A **genre cap** skips an item that would
   put more than ``genre_cap`` items of one genre in the list.
4. **Exploration**, ε-greedy: with probability ε a slot takes a uniformly drawn eligible
   candidate instead of the greedy one. Each slot records its propensity, the
   probability that the policy shows that item in that slot given the slots before it
   (``(1 − ε)·[greedy pick] + ε / eligible``), so that a logged list supports
   inverse-propensity estimates of another policy's value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Slot", "rerank"]


@dataclass(frozen=True)
class Slot:
    """One position of the final list: the candidate index, its relevance, the
    probability the policy gave it, whether exploration chose it."""

    candidate: int
    relevance: float
    propensity: float
    explored: bool


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length."""
    vectors = np.asarray(vectors, np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def rerank(
    relevance: np.ndarray,
    vectors: np.ndarray,
    k: int,
    *,
    allowed: np.ndarray,
    genres: list[tuple[int, ...]],
    fresh: np.ndarray,
    lam: float = 1.0,
    freshness_boost: float = 0.0,
    genre_cap: int | None = None,
    explore: float = 0.0,
    rng: np.random.Generator | None = None,
) -> list[Slot]:
    """Up to ``k`` slots over candidates with ``relevance`` and embedding ``vectors``
    (one row each); ``allowed`` the rules' mask,
    ``genres`` each candidate's genre ids, ``fresh`` whether it is inside the launch
    window (see module docstring)."""
    if not 0 <= lam <= 1:
        raise ValueError(f"lam must be in [0, 1] (got {lam})")
    if not 0 <= explore <= 1:
        raise ValueError(f"explore must be in [0, 1] (got {explore})")
    if explore > 0 and rng is None:
        raise ValueError("exploration needs an rng")
    n = len(relevance)
    rel = np.asarray(relevance, np.float64)
    top = np.max(np.abs(rel)) if n else 0.0
    rel = rel / top if top > 0 else np.zeros(n)
    rel = rel + freshness_boost * np.asarray(fresh, bool)
    if n and lam < 1:  # every pair's cosine, once per list: candidates are few
        unit = _unit(vectors)
        cosines: np.ndarray | None = unit @ unit.T
    else:  # λ = 1: no MMR, no similarities
        cosines = None
    eligible = np.asarray(allowed, bool).copy()
    nearest = np.full(n, -np.inf)  # max cosine to the chosen items (none yet)
    holders: dict[int, list[int]] = {}  # genre -> the candidates that have it (for a cap)
    for i, gs in enumerate(genres if genre_cap is not None else ()):
        for g in gs:
            holders.setdefault(g, []).append(i)
    counts: dict[int, int] = {}
    slots: list[Slot] = []
    while len(slots) < k:
        pool = np.flatnonzero(eligible)
        if not len(pool):
            break
        penalty = np.where(np.isfinite(nearest[pool]), nearest[pool], 0.0)
        value = lam * rel[pool] - (1 - lam) * penalty
        greedy = int(pool[np.argmax(value)])  # first maximum: candidate order breaks ties
        chosen, explored = greedy, False
        if explore > 0 and rng is not None and rng.random() < explore:
            chosen = int(pool[rng.integers(len(pool))])
            explored = chosen != greedy
        propensity = (1 - explore) * (chosen == greedy) + explore / len(pool)
        slots.append(Slot(chosen, float(rel[chosen]), float(propensity), explored))
        eligible[chosen] = False
        if genre_cap is not None:
            for g in genres[chosen]:
                counts[g] = counts.get(g, 0) + 1
                if counts[g] >= genre_cap:
                    eligible[holders[g]] = False  # the genre is full
        if cosines is not None:
            nearest = np.maximum(nearest, cosines[chosen])
    return slots
