"""The ranker's weights and how a device scores with them (numpy only: the serving path).

Its input is one row of :data:`FEATURES` per candidate, computed on the device
(``stamen.client.pipeline.ranking``): which generators proposed it and at what rank, the release
model's score, content affinity, trending and popularity, the item's age, the request's
context (hour, weekday, device kind) and the person's history length. Its output is a
score, higher first (:func:`ranker_scores`): a linear part ``x · w + b`` (``hidden = 0``:
logistic regression; the request's own features then shift every candidate alike and
cannot change the order) plus, for ``hidden > 0``, a two-layer ReLU network
``relu(x W1 + b1) · w2`` that can weigh the item features by context and history length
(wide and deep). It starts as the retrieval order (:data:`PRIOR`, :func:`init_ranker`):
``w`` weighs the standardised retrieval score (and, for a person with no history, the
popularity list's rank) by 1 and ``w2`` starts at zero, so training learns corrections to
the first stage rather than an order from nothing.

Training (torch) lives in ``stamen.models.ranker.model`` and its settings (pydantic) in
``stamen.models.ranker.settings``; a device that only serves a release imports neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from stamen.models.ranker.settings import RankerSettings

__all__ = [
    "DEVICE_KINDS",
    "FEATURES",
    "PRIOR",
    "RANKED_GENERATORS",
    "check_ranker",
    "init_ranker",
    "ranker_hidden",
    "ranker_names",
    "ranker_scores",
]

#: The generators whose proposals the ranker reads (a generator registered later is not
#: a feature until the ranker's layout grows).
RANKED_GENERATORS = ("cf", "content", "trending", "fresh", "popular")
#: Device kinds a request's context may name (``context["device"]``); others: none.
DEVICE_KINDS = ("phone", "tablet", "desktop", "tv")

#: The ranker's input columns, in order (``stamen.client.pipeline.ranking`` computes them).
FEATURES: tuple[str, ...] = (
    *(f"proposed:{g}" for g in RANKED_GENERATORS),  # 1 if the generator proposed it
    *(f"rank:{g}" for g in RANKED_GENERATORS),  # 1 / log2(2 + rank), 0 if not proposed
    "cf_score",  # the release model's score (0 without a user vector)
    "cf_z",  # that score standardised over the candidates
    "content",  # cosine of the item's genres with the person's profile
    "trending",  # log1p(count) / log1p(largest count)
    "popularity",  # the release's popularity (learned item bias)
    "popularity_z",  # standardised over the candidates
    "age",  # log1p(days since first seen) / log1p(3650)
    "age_unknown",
    "hour_sin",
    "hour_cos",
    "weekday_sin",
    "weekday_cos",  # hour and weekday: the request's, else the device clock's
    *(f"device:{kind}" for kind in DEVICE_KINDS),
    "history",  # log1p(history length) / log1p(1000)
)


def ranker_names(settings: RankerSettings) -> tuple[str, ...]:
    """Names of the ranker's arrays, in order."""
    return ("w", "b", "w1", "b1", "w2") if settings.hidden else ("w", "b")


#: The linear part's start: the retrieval order (see module docstring).
PRIOR = {"cf_z": 1.0, "rank:popular": 1.0}


def init_ranker(settings: RankerSettings, seed: int) -> list[np.ndarray]:
    """Seeded initial weights (float32): the linear part at :data:`PRIOR`, a He-scaled
    first hidden layer, zero biases and a zero output layer."""
    n = len(FEATURES)
    w = np.zeros(n, np.float32)
    for name, value in PRIOR.items():
        w[FEATURES.index(name)] = value
    linear = [w, np.zeros(1, np.float32)]
    if not settings.hidden:
        return linear
    rng = np.random.default_rng([seed, 0x52414E4B])  # "RANK"
    h = settings.hidden
    return linear + [
        rng.normal(0.0, np.sqrt(2.0 / n), (n, h)).astype(np.float32),
        np.zeros(h, np.float32),
        np.zeros(h, np.float32),
    ]


def ranker_hidden(weights: list[np.ndarray]) -> int:
    """Hidden units of the ranker ``weights`` (0: logistic regression)."""
    check_ranker(weights)
    return int(np.shape(weights[2])[1]) if len(weights) == 5 else 0


def check_ranker(weights: list[np.ndarray]) -> None:
    """Raise ``ValueError`` unless ``weights`` are a ranker over :data:`FEATURES`."""
    n = len(FEATURES)
    shapes = [tuple(np.shape(w)) for w in weights]
    if shapes[:2] == [(n,), (1,)]:
        if len(shapes) == 2:
            return
        if len(shapes) == 5 and len(shapes[2]) == 2 and shapes[2][0] == n:
            h = shapes[2][1]
            if shapes[3:] == [(h,), (h,)]:
                return
    raise ValueError(f"not a ranker over {n} features: array shapes {shapes}")


def ranker_scores(weights: list[np.ndarray], features: np.ndarray) -> np.ndarray:
    """Scores ``(n,)`` of ``features`` ``(n, len(FEATURES))`` (numpy: the device's path)."""
    x = np.asarray(features, np.float32)
    score = x @ weights[0] + weights[1][0]
    if len(weights) == 5:
        w1, b1, w2 = weights[2:]
        score = score + np.maximum(x @ w1 + b1, 0.0) @ w2
    return score
