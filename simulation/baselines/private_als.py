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

import time
from collections.abc import Callable
from dataclasses import dataclass, fields

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
    "ALSRounds",
    "OnALSRound",
    "PrivateALSResult",
    "dp_item_counts",
    "dp_popularity",
    "private_als_rounds",
    "run_private_als",
]

#: Devices whose statistics are materialised at once (memory: chunk × layout.size × 8 B).
CHUNK = 64


#: ``on_round(record, shared)``: a finished round's record and the item side
#: ``[items, bias]`` it left (the public start after the count release).
OnALSRound = Callable[[RoundRecord, list[np.ndarray]], None]


@dataclass(frozen=True)
class ALSRounds:
    """The released item side, the DP counts, the rounds' records (numbered as
    ``FederatedALS`` numbers them: round 1 the count release, rounds 2 … ``rounds + 1``
    the statistics) and a device's upload in a statistics round (float64)."""

    items: np.ndarray
    bias: np.ndarray
    counts: np.ndarray
    history: list[RoundRecord]
    upload_bytes: int


@dataclass(frozen=True)
class PrivateALSResult(ALSRounds):
    """:class:`ALSRounds` with the noise multiplier and the privacy spent."""

    noise_multiplier: float
    epsilon: float
    delta: float


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
    rounds = private_als_rounds(data, settings, noise_multiplier=z, seed=seed)
    return PrivateALSResult(
        **{f.name: getattr(rounds, f.name) for f in fields(rounds)},
        noise_multiplier=z,
        epsilon=_spent(z, delta, releases),
        delta=delta,
    )


def private_als_rounds(
    data: UserItems,
    settings: ALSSettings,
    *,
    noise_multiplier: float,
    seed: int,
    on_round: OnALSRound | None = None,
) -> ALSRounds:
    """The ``settings.rounds + 1`` releases of private ALS over the devices ``data`` (one
    row each) at noise multiplier ``noise_multiplier`` (0: no noise), split between the
    count release and the statistics by ``release_noise``; ``on_round`` gets each round as
    it ends. The accounting is the caller's (:func:`run_private_als`)."""
    z_counts, z_statistics = release_noise(noise_multiplier, settings)
    rng = np.random.default_rng([seed, 31])
    tick = time.perf_counter()
    counts = dp_item_counts(data, noise_multiplier=z_counts, rng=rng)
    head = choose_head(counts, settings)
    layout = ALSLayout(dim=settings.dim, head=head, item_grams=settings.item_grams)
    items, bias = initial_item_side(data.n_items, settings, seed=seed)
    sensitivity = als_sensitivity(
        user_clip=settings.user_clip, cap=settings.cap, item_grams=settings.item_grams
    )
    history = [_record(1, "counts", data.n_users, 8 * data.n_items, tick)]
    if on_round is not None:
        on_round(history[-1], [items, bias])
    for rnd in range(2, settings.rounds + 2):
        tick = time.perf_counter()
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
        history.append(_record(rnd, "statistics", data.n_users, 8 * layout.size, tick))
        history[-1].clipped_user_factors = clipped
        if on_round is not None:
            on_round(history[-1], [items, bias])
    return ALSRounds(
        items=items, bias=bias, counts=counts, history=history, upload_bytes=8 * layout.size
    )


def _record(rnd: int, stage: str, devices: int, upload: int, started: float) -> RoundRecord:
    """A release's record as ``FederatedALS`` keeps it: every device took part."""
    return RoundRecord(
        round=rnd,
        stage=stage,
        cohort=devices,
        devices=devices,
        failures=0,
        upload_bytes_per_device=upload,
        seconds=time.perf_counter() - started,
    )
