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


#: Candidates up to which MMR computes every pair's cosine at once (2,048: a 32 MiB matrix).
_PAIRWISE_AT_MOST = 2048


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
    unit = _unit(vectors) if n and lam < 1 else None  # λ = 1: no MMR, no similarities
    # every pair's cosine, once per list, where the candidates are few (the usual
    # budgets); a pipeline widened to a large catalogue (a large k) takes each chosen
    # item's cosines as it is chosen instead of an n × n matrix
    cosines = unit @ unit.T if unit is not None and n <= _PAIRWISE_AT_MOST else None
    eligible = np.asarray(allowed, bool).copy()
    nearest = np.full(n, -np.inf)  # max cosine to the chosen items (none yet)
    # λ·relevance of the eligible (-inf: not eligible); no value is -inf otherwise (the
    # relevance is finite or NaN after scaling, a penalty finite), so the first maximum
    # of ``value`` is the eligible candidate MMR picks (candidate order breaks ties)
    gain = np.where(eligible, lam * rel, -np.inf)
    value = gain  # what the next pick maximises (no chosen item to resemble yet)
    holders: dict[int, list[int]] = {}  # genre -> the candidates that have it (for a cap)
    for i, gs in enumerate(genres if genre_cap is not None else ()):
        for g in gs:
            holders.setdefault(g, []).append(i)
    counts: dict[int, int] = {}
    slots: list[Slot] = []
    size = int(np.count_nonzero(eligible))  # how many are eligible
    while len(slots) < k and size:
        greedy = int(np.argmax(value))
        chosen, explored = greedy, False
        if explore > 0 and rng is not None and rng.random() < explore:
            chosen = int(np.flatnonzero(eligible)[rng.integers(size)])
            explored = chosen != greedy
        propensity = (1 - explore) * (chosen == greedy) + explore / size
        slots.append(Slot(chosen, float(rel[chosen]), float(propensity), explored))
        eligible[chosen], gain[chosen], size = False, -np.inf, size - 1
        if genre_cap is not None:
            for g in genres[chosen]:
                counts[g] = counts.get(g, 0) + 1
                if counts[g] >= genre_cap:  # the genre is full
                    eligible[holders[g]], gain[holders[g]] = False, -np.inf
                    size = int(np.count_nonzero(eligible))
        if unit is not None and len(slots) < k:
            row = cosines[chosen] if cosines is not None else unit @ unit[chosen]
            np.maximum(nearest, row, out=nearest)
            value = gain - (1 - lam) * np.where(np.isfinite(nearest), nearest, 0.0)
    return slots
