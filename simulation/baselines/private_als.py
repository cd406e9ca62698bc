"""Private ALS and DP popularity, simulated over a whole population at once.

Both are Gaussian mechanisms on sums of per-device vectors (``stamen.client.flower.statistics``:
bounded norm by construction), with full participation and the noise added to the sum:

- **DP popularity**: one release of the item counts (each device's vector has norm 1), the
  honest private baseline: popularity computed from people's data is not free.
- **Private ALS** (Chien et al., "Private Alternating Least Squares", ICML 2021): the head
  items are the ``head`` largest DP counts (that release is charged to the budget); then
  each of ``rounds`` rounds every device solves its user factor exactly against the
  current item side (``IALSSolver``, as on the device), sends its clipped ALS statistics,
  and the server solves the item side from the noisy sum (``stamen.server.als``), its
  ridge ``item_l2 + noise_l2 · σ`` growing with the noise std ``σ``, so that the factors
  shrink towards calibrated popularity as ε falls.

The budget is that of ``rounds + 1`` releases at one noise multiplier ``z``, the smallest
whose composition (Opacus' RDP accountant, sampling rate 1) stays within ``epsilon`` at
``delta``; ``settings.count_share`` splits it between the count release and the rounds
(``stamen.server.als.release_noise``: the same RDP curve); each release's noise is its
multiplier times its sensitivity. The model reported is the
last round's: no round is chosen by looking at private validation metrics.

Left out here: SecAgg+'s quantisation (below 5e-7 a coordinate at its defaults,
``tests/integration/test_attack_on_secagg.py``, far under the noise) and its transport.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stamen.client.flower.statistics import als_statistics, item_counts
from stamen.models.als.layout import ALSLayout, als_sensitivity
from stamen.models.batches import UserItems
from stamen.models.mf.ials import IALSSolver
from stamen.models.quantize import ItemTable
from stamen.privacy import DPSettings, PrivacyAccountant, noise_for_target
from stamen.server.als import (
    ALSSettings,
    choose_head,
    initial_item_side,
    release_noise,
    solve_item_side,
)
from stamen.server.rounds import RoundRecord

__all__ = [
    "PrivateALSResult",
    "dp_item_counts",
    "dp_popularity",
    "run_private_als",
]

#: Devices whose statistics are materialised at once (memory: chunk × layout.size × 8 B).
CHUNK = 64


@dataclass(frozen=True)
class PrivateALSResult:
    """The released item side, the DP counts, the privacy spent and per-round records."""

    items: np.ndarray
    bias: np.ndarray
    counts: np.ndarray
    noise_multiplier: float
    epsilon: float
    delta: float
    history: list[RoundRecord]
    upload_bytes: int


def _noise_multiplier(epsilon: float, delta: float, releases: int) -> float:
    if epsilon == float("inf"):
        return 0.0
    return noise_for_target(target_epsilon=epsilon, delta=delta, sampling_rate=1.0, rounds=releases)


def _spent(z: float, delta: float, releases: int) -> float:
    if z == 0:
        return float("inf")
    settings = DPSettings(noise_multiplier=z, clip_norm=1.0, sampling_rate=1.0, delta=delta)
    return PrivacyAccountant(settings, rounds=releases).epsilon


def dp_item_counts(
    data: UserItems, *, noise_multiplier: float, rng: np.random.Generator
) -> np.ndarray:
    """Noisy sum of every device's :func:`item_counts` vector (sensitivity 1)."""
    total = np.zeros(data.n_items)
    for start in range(0, data.n_users, CHUNK):
        rows = np.arange(start, min(start + CHUNK, data.n_users))
        total += item_counts(data.select(rows)).sum(0)
    return total + rng.normal(0.0, noise_multiplier, data.n_items)


def dp_popularity(
    data: UserItems, *, epsilon: float, delta: float, seed: int
) -> tuple[np.ndarray, float]:
    """The DP popularity baseline: item counts from one Gaussian release within
    ``(epsilon, delta)``; returns the noisy counts and the ε spent."""
    z = _noise_multiplier(epsilon, delta, 1)
    counts = dp_item_counts(data, noise_multiplier=z, rng=np.random.default_rng([seed, 30]))
    return counts, _spent(z, delta, 1)


def run_private_als(
    data: UserItems,
    settings: ALSSettings,
    *,
    epsilon: float,
    delta: float,
    seed: int,
) -> PrivateALSResult:
    """DP counts, then ``settings.rounds`` rounds of private ALS over the devices ``data``
    (one row each), within ``(epsilon, delta)`` (``inf``: no noise)."""
    releases = settings.rounds + 1
    z = _noise_multiplier(epsilon, delta, releases)
    z_counts, z_statistics = release_noise(z, settings)
    rng = np.random.default_rng([seed, 31])
    counts = dp_item_counts(data, noise_multiplier=z_counts, rng=rng)
    head = choose_head(counts, settings)
    layout = ALSLayout(dim=settings.dim, head=head, item_grams=settings.item_grams)
    items, bias = initial_item_side(data.n_items, settings, seed=seed)
    sensitivity = als_sensitivity(
        user_clip=settings.user_clip, cap=settings.cap, item_grams=settings.item_grams
    )
    history: list[RoundRecord] = []
    for rnd in range(1, settings.rounds + 1):
        solver = IALSSolver.build(
            ItemTable.dense(items), bias, alpha=settings.alpha, l2=settings.user_l2
        )
        total = np.zeros(layout.size)
        clipped = 0
        for begin in range(0, data.n_users, CHUNK):
            chunk = data.select(np.arange(begin, min(begin + CHUNK, data.n_users)))
            factors = solver.solve(chunk).astype(np.float64)
            clipped += int((np.linalg.norm(factors, axis=1) > settings.user_clip).sum())
            total += als_statistics(
                factors, chunk, layout, user_clip=settings.user_clip, cap=settings.cap
            ).sum(0)
        total += rng.normal(0.0, z_statistics * sensitivity, layout.size)
        items, bias = solve_item_side(
            total,
            layout,
            n_items=data.n_items,
            alpha=settings.alpha,
            l2=settings.item_l2 + settings.noise_l2 * z_statistics * sensitivity,
            counts=counts,
        )
        history.append(RoundRecord(round=rnd, clipped_user_factors=clipped))
    return PrivateALSResult(
        items=items,
        bias=bias,
        counts=counts,
        noise_multiplier=z,
        epsilon=_spent(z, delta, releases),
        delta=delta,
        history=history,
        upload_bytes=8 * layout.size,
    )
