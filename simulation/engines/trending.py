"""Trending counts for a whole population at once (benchmarks, batched simulations).

Every user's device vector (``stamen.client.flower.analytics.trending_vectors``, the function a
device runs) is summed in numpy and released by the very ``PrivateSum`` a federated run
uses (``stamen.server.analytics``): every device asked once (sampling rate 1), central
Gaussian noise (distributed mode's shares sum to the same distribution), δ = 1 / users
unless given. A Flower run sums the vectors under SecAgg+ first;
``tests/integration/test_analytics_rounds.py`` checks that sum against this plain one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from stamen.client.flower.analytics import trending_vectors
from stamen.models.analytics import TRENDING, query_scale
from stamen.privacy import Purpose, UserDP
from stamen.server.analytics import PrivateSum
from stamen.server.strategy import FederatedAveraging
from stamen.simulation.protocol.split import Split

__all__ = ["population_trending_sum", "private_trending", "true_trending"]

DAY = 86_400.0


def true_trending(split: Split, *, window_days: float, cap: int) -> tuple[np.ndarray, float]:
    """The exact counts of the window ending at the split's last training event, and that
    time."""
    if split.train_times is None:
        raise ValueError("trending needs event times; this split has none")
    rows, items = split.train.pairs()
    now = float(split.train_times.max())
    vectors = trending_vectors(
        rows,
        items,
        split.train_times,
        n_devices=split.n_users,
        n_items=split.n_items,
        now=now,
        window=window_days * DAY,
        cap=cap,
    )
    return vectors.sum(axis=0), now


def population_trending_sum(
    owner: FederatedAveraging | None, *, cap: int, dp: UserDP, users: int, releases: int, seed: int
) -> PrivateSum:
    """The trending counts' ``PrivateSum`` of ``users`` devices that all answer every time
    it is asked, without SecAgg+, released ``releases`` times; ``owner`` is the strategy
    that asks it (``None``: the caller hands it the sum itself)."""
    return PrivateSum(
        owner,
        name=TRENDING,
        width=cap,
        dp=dp,
        population=users,
        cohort=users,
        releases=releases,
        secagg=None,
        seed=seed,
        purpose=Purpose.TRENDING,
    )


def private_trending(
    counts: np.ndarray, *, epsilon: float, users: int, cap: int, seed: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """``counts`` released once at ``epsilon`` (``inf``: no noise), negatives read as 0,
    and the release's privacy report (ε, δ, z, and the noise's std in counts)."""
    dp = UserDP() if math.isinf(epsilon) else UserDP(mode="central", target_epsilon=epsilon)
    query = population_trending_sum(None, cap=cap, dp=dp, users=users, releases=1, seed=seed)
    scaled = np.asarray(counts, np.float64) * query_scale(width=cap, clip_norm=dp.clip_norm)
    result = query.release(scaled, rnd=1, devices=users)
    report = query.report() or {"epsilon": math.inf, "delta": 0.0, "noise_multiplier": 0.0}
    return np.maximum(result.total, 0.0), {**report, "noise_std": result.noise_std}
