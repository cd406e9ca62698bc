"""The server's half of private ALS: item factors from summed (noisy) statistics.

With ``p̃_u = [p_u, 1]`` and ``q̃_i = [q_i, b_i]`` (item factor and bias), the ``ials``
objective ``Σ_u Σ_i c_ui (t_ui - p_u·q_i - b_i)² + l2 |q̃_i|²`` (``c = 1 + alpha t``) is
minimised for each item by ``(G + alpha A_i + l2 I) q̃_i = (1 + alpha) r_i``, where
``G = Σ_u p̃_u p̃_uᵀ`` over everyone and ``A_i``, ``r_i`` sum ``p̃_u p̃_uᵀ`` and ``p̃_u`` over
the people who hold item ``i`` (weighted). Without per-item Grams (a quarter of the noise
at ``dim`` 16 and a ``dim``-times smaller upload) the solve drops ``alpha A_i`` from the
left-hand side: uniform confidence on the item side. Items outside the head get
no factor; their bias comes from the item counts where given, else lies below every head
item's.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from stamen.models.als.layout import ALSLayout

__all__ = [
    "ALSSettings",
    "choose_head",
    "initial_item_side",
    "release_noise",
    "solve_item_side",
]


class ALSSettings(BaseModel):
    """Private ALS hyper-parameters. The defaults are a starting point; the settings
    each data set's benchmark chose on validation (``benchmarks/private_quality.py``)
    are in ``benchmarks/results/private-quality-*.md`` (ML-100K at ε = 4: dim 32, head
    200, cap 8, alpha 4, item_l2 30)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dim: int = Field(16, gt=0, description="latent dimension (the upload grows with dim²)")
    rounds: int = Field(3, ge=1, description="ALS rounds, every device in every round")
    head: int = Field(400, gt=0, description="items with factors: the largest DP counts")
    cap: int = Field(32, gt=0, description="sum of a device's squared item weights, at most")
    item_grams: bool = Field(False, description="send per-item Grams (the alpha term)")
    user_clip: float = Field(1.0, gt=0, description="L2 bound on a user factor")
    alpha: float = Field(1.0, ge=0, description="ials: extra confidence of a positive")
    user_l2: float = Field(1.0, gt=0, description="L2 weight on a user factor")
    item_l2: float = Field(10.0, gt=0, description="L2 weight on an item factor")
    noise_l2: float = Field(
        20.0, ge=0, description="added to item_l2 per unit of the statistics' noise std"
    )
    init_std: float = Field(0.1, gt=0, description="std of the public random item start")
    count_share: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="share of the privacy budget spent on the item counts (None: an "
        "equal share for each of the rounds + 1 releases); see release_noise",
    )


def release_noise(noise_multiplier: float, settings: ALSSettings) -> tuple[float, float]:
    """The noise multipliers ``(z_counts, z_statistics)`` of private ALS' count release and
    of each of its ``rounds`` statistics releases, given the multiplier ``z`` at which
    ``rounds + 1`` equal releases spend the budget.

    A Gaussian release with multiplier ``z`` over every device (sampling rate 1) has Rényi
    DP ``a / (2 z²)`` at every order ``a``, and compositions add, so the budget is the
    "precision" ``(rounds + 1) / z²``: the counts take ``count_share`` of it and the
    rounds share the rest, ``1 / z_c² + rounds / z_s² = (rounds + 1) / z²``. Every such
    split has exactly the RDP curve, and so the ε, of ``rounds + 1`` releases at ``z``,
    which is what the accountant records."""
    if noise_multiplier == 0:
        return 0.0, 0.0
    releases = settings.rounds + 1
    share = 1 / releases if settings.count_share is None else settings.count_share
    return (
        noise_multiplier / math.sqrt(share * releases),
        noise_multiplier / math.sqrt((1 - share) * releases / settings.rounds),
    )


def initial_item_side(n_items: int, settings: ALSSettings, *, seed: int) -> list[np.ndarray]:
    """The public, seeded start: Gaussian item factors and zero biases."""
    rng = np.random.default_rng([seed, 32])
    items = rng.normal(0.0, settings.init_std, (n_items, settings.dim)).astype(np.float32)
    return [items, np.zeros(n_items, np.float32)]


def choose_head(counts: np.ndarray, settings: ALSSettings) -> np.ndarray:
    """The ``settings.head`` items with the largest (DP) counts, sorted by row."""
    return np.sort(np.argsort(-np.asarray(counts), kind="stable")[: settings.head])


def _symmetric(m: np.ndarray) -> np.ndarray:
    return (m + np.swapaxes(m, -1, -2)) / 2


def solve_item_side(
    total: np.ndarray,
    layout: ALSLayout,
    *,
    n_items: int,
    alpha: float,
    l2: float,
    counts: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Item factors ``(n_items, dim)`` (float32) and biases ``(n_items,)`` from the summed
    statistics ``total`` (``layout.size``), in two steps so that the noisiest statistics
    cannot drown the popularity signal:

    1. each item's bias alone, ``b_i = (1 + alpha) n_i / (N + alpha n_i + 1)``, from its
       count ``n_i`` and the number of devices ``N = G[-1, -1]`` (the ``ials`` minimiser
       with ``q_i = 0``: popularity, calibrated). ``n_i = r_i[-1]`` for head items; with
       ``counts`` (a separate, less noisy release of item counts for every item, on
       another scale) ``n_i = κ counts_i``, ``κ = Σ_head r_i[-1] / Σ_head counts_i``;
    2. its factor given the bias, ``(G_pp + alpha A_i,pp + l2 I) q_i = (1 + alpha) r_i,p -
       b_i (S + alpha r_i,p)`` with ``S = Σ_u p_u = G[:-1, -1]`` (without per-item Grams,
       ``alpha`` is 0 in this step: uniform confidence on the item side).

    Noise makes ``G`` and ``A_i`` indefinite; their negative eigenvalues are raised to 0
    first, which keeps the systems positive definite under any ``l2 > 0``. As ``l2``
    grows the factors shrink to 0 and the model to calibrated popularity."""
    if l2 <= 0:
        raise ValueError(f"l2 must be positive (got {l2})")
    gram, grams, rhs = layout.split(np.asarray(total, np.float64))
    gram = _psd(_symmetric(gram))
    devices, held = max(gram[-1, -1], 1.0), np.maximum(rhs[:, -1], 0.0)
    if counts is not None:
        counts = np.maximum(np.asarray(counts, np.float64), 0.0)
        scale = held.sum() / max(counts[layout.head].sum(), 1e-12)
        every = (1.0 + alpha) * scale * counts / (devices + alpha * scale * counts + 1.0)
        head_bias = every[layout.head]
    else:
        head_bias = (1.0 + alpha) * held / (devices + alpha * held + 1.0)
    conf = alpha if grams is not None else 0.0
    lhs = gram[None, :-1, :-1] + l2 * np.eye(layout.dim)[None]
    if grams is not None:
        lhs = lhs + alpha * _psd(_symmetric(grams[:, :-1, :-1]))
    r = rhs[:, :-1]
    b = head_bias[:, None]
    right = (1.0 + conf) * r - b * (gram[None, :-1, -1] + conf * r)
    solved = np.linalg.solve(lhs, right[:, :, None])[:, :, 0]
    items = np.zeros((n_items, layout.dim), np.float32)
    bias = np.zeros(n_items, np.float32)
    items[layout.head] = solved
    bias[layout.head] = head_bias
    tail = np.setdiff1d(np.arange(n_items), layout.head)
    if counts is not None:
        bias[tail] = every[tail]
    elif len(tail) and len(layout.head):
        bias[tail] = head_bias.min() - 1.0
    return items, bias


def _psd(m: np.ndarray) -> np.ndarray:
    """``m`` (symmetric, ``(..., d, d)``) with negative eigenvalues set to 0."""
    values, vectors = np.linalg.eigh(m)
    return (vectors * np.maximum(values, 0.0)[..., None, :]) @ np.swapaxes(vectors, -1, -2)
