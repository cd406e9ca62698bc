"""The ranker's input on the device: each candidate's features.

:func:`candidate_features` turns a request's merged candidates into the rows the ranker
reads (``stamen.models.ranker.weights.FEATURES``); the pipeline scores them when the release
carries a ranker, and a device's training example (``stamen.client.pipeline.recommend
.offered_example``) is made of them. They are computed on the device, from the installed
release and the person's history, and never leave it (only the ranker's clipped,
aggregated weight updates do).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from stamen.client.pipeline.candidates import (
    Candidates,
    Request,
    cf_scores_of,
    content_profile,
)
from stamen.models.ranker.weights import DEVICE_KINDS, FEATURES, RANKED_GENERATORS
from stamen.models.two_tower.context import context_row

__all__ = ["candidate_features"]

_COLUMN = {name: i for i, name in enumerate(FEATURES)}
_DAY = 86400.0
_AGE_SCALE = np.log1p(3650.0)  # ten years
_HISTORY_SCALE = np.log1p(1000.0)


def _standardised(values: np.ndarray) -> np.ndarray:
    spread = values.std()
    return (values - values.mean()) / spread if spread > 0 else np.zeros_like(values)


def candidate_features(
    candidates: Candidates, request: Request, which: np.ndarray | None = None
) -> np.ndarray:
    """The ranker's input ``(n, len(FEATURES))`` for ``request``'s candidates ``which``
    (indices; ``None``: all), float32; see ``stamen.models.ranker.weights.FEATURES`` for the
    columns. Standardised columns are standardised over the candidates described."""
    which = np.arange(len(candidates)) if which is None else np.asarray(which, np.int64)
    rows = candidates.rows[which]
    out = np.zeros((len(rows), len(FEATURES)), np.float32)
    if not len(rows):
        return out
    ranks = candidates.ranks()[which]
    for g, name in enumerate(candidates.names):
        if name in RANKED_GENERATORS:
            proposed = np.isfinite(ranks[:, g])
            out[:, _COLUMN[f"proposed:{name}"]] = proposed
            out[proposed, _COLUMN[f"rank:{name}"]] = 1.0 / np.log2(2.0 + ranks[proposed, g])
    cf = cf_scores_of(request, rows)
    if cf is not None:
        out[:, _COLUMN["cf_score"]] = cf
        out[:, _COLUMN["cf_z"]] = _standardised(cf)
    index = request.index
    profile = content_profile(request)
    norm = np.linalg.norm(profile)
    if norm > 0:
        with np.errstate(invalid="ignore", divide="ignore"):
            cosine = index.genres.take(rows).dot(profile) / (index.norms[rows] * norm)
        out[:, _COLUMN["content"]] = np.nan_to_num(cosine)
    if index.trending is not None:
        counts = np.maximum(index.trending, 0.0)
        top = np.log1p(counts.max())
        if top > 0:
            out[:, _COLUMN["trending"]] = np.log1p(counts[rows]) / top
    popularity = index.popularity[rows]
    out[:, _COLUMN["popularity"]] = popularity
    out[:, _COLUMN["popularity_z"]] = _standardised(popularity)
    first_seen = np.asarray(index.catalog.first_seen[rows], np.float64)
    known = first_seen >= 0  # negative: unknown
    age_days = np.maximum(request.now - first_seen[known], 0.0) / _DAY
    out[known, _COLUMN["age"]] = np.log1p(age_days) / _AGE_SCALE
    out[~known, _COLUMN["age_unknown"]] = 1.0
    out[:, _COLUMN["history"]] = np.log1p(len(request.history)) / _HISTORY_SCALE
    out[:, _context_columns()] = _context_values(request.context, request.now)
    return out


def _context_columns() -> list[int]:
    names = ["hour_sin", "hour_cos", "weekday_sin", "weekday_cos"]
    return [_COLUMN[n] for n in names] + [_COLUMN[f"device:{k}"] for k in DEVICE_KINDS]


def _context_values(context: Mapping[str, object], now: float) -> np.ndarray:
    """The request's context columns: hour and weekday on the circle (each from the
    request's context, else from the device's clock at ``now``), the device kind one-hot
    (an unknown kind: zeros)."""
    hour, weekday = context_row(context, at=now).tolist()
    values = np.zeros(4 + len(DEVICE_KINDS), np.float32)
    values[:4] = [
        np.sin(2 * np.pi * hour / 24),
        np.cos(2 * np.pi * hour / 24),
        np.sin(2 * np.pi * weekday / 7),
        np.cos(2 * np.pi * weekday / 7),
    ]
    kind = context.get("device")
    if kind in DEVICE_KINDS:
        values[4 + DEVICE_KINDS.index(str(kind))] = 1.0
    return values
