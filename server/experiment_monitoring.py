"""Sequential monitoring of a private A/B experiment: look every round without inflating
the false-positive rate.

**Looks.** The experiment plans ``K`` looks. At look ``k`` every device contributes its
contribution over the windows so far (``stamen.client.device.experiments``; counts are
additive) and the server receives fresh noisy sums: each look is one release of the
experiment's Gaussian-sum mechanism, whose accountant composes the ``K`` releases
(``experiment_mechanism(..., rounds=K)``), so the ε reported is the whole experiment's and
``σ`` is larger than for one release. At each look the effect ``Δ̂_k`` and its variance
``V_k`` (sampling and noise) come from ``stamen.server.experiment_stats``, and
``Z_k = Δ̂_k / sqrt(V_k)``.

**Group-sequential boundary** (:func:`group_sequential_bounds`). Lan & DeMets (1983) spend
``α`` over the information fraction ``t_k = I_k / I_K`` (``I = 1 / V``, against the planned
final information): :func:`spending` is the O'Brien-Fleming type
``α(t) = 4 − 4 Φ(z_{1−α/4} / sqrt(t))`` (``α/2`` per side, as gsDesign's ``sfLDOF`` for a
symmetric two-sided test) or the Pocock type ``α ln(1 + (e − 1) t)``. The bound ``b_k`` solves

    P(|Z_1| < b_1, …, |Z_{k−1}| < b_{k−1}, |Z_k| ≥ b_k) = α(t_k) − α(t_{k−1})

under ``H₀``, with ``(Z_1, …, Z_K)`` jointly normal (``scipy.stats.multivariate_normal``'s
CDF over the rectangle ``[−b, b]``). statsmodels has power and sample-size functions but no
group-sequential boundaries (and is not a dependency here), so this module computes them.

**The correlation, and the noise.** Without noise, ``Δ̂_k`` is (asymptotically) a mean over
nested samples (the later look's estimate contains the earlier one's data), so
``Cov(Δ̂_i, Δ̂_j) = V_j`` for ``i ≤ j`` (the later, smaller variance) and
``Corr(Z_i, Z_j) = sqrt(I_i / I_j)``: the canonical correlation. A sum-type statistic with
independent increments (a cumulative count per person, whose variance grows with the
windows) has ``Cov = V_i``, again the smaller of the two; both cases read
``Cov(Δ̂_i, Δ̂_j) = min(V_i, V_j)``. With DP the variance splits as ``V_k = V_k^s + V_k^n``
(sampling, noise), and the noise is fresh at each look, independent of the sampling and of
the other looks' noise, so

    Corr(Z_i, Z_j) = min(V_i^s, V_j^s) / sqrt(V_i V_j)   (i ≠ j)

which is *smaller* than the canonical ``min(V_i, V_j) / sqrt(V_i V_j)`` (by about
``V^n / sqrt(V_i V_j)``).
Less correlated looks give more chances to cross, so the canonical boundaries are
anti-conservative under strong noise; :func:`look_correlation` gives the noise-aware
matrix (``V^n`` is known: the server knows ``σ``; ``V^n = V(σ) − V(0)`` from the same
estimator). Two further approximations: the metrics are ratios of cumulative counts (the
mean per impression over the windows so far, ``exposures`` clipped at its bound), whose
per-person values are not exact sums of per-window increments, so the sampling part is only
approximately nested (nor is information ``1 / V_k`` always increasing: under strong noise,
or for ``exposures``, it can fall, and then the spending time is better the share of the
planned windows, ``k / K``, which is just as valid: it does not depend on the data); and the
boundaries here are computed from the *planned* fractions
(the same for every repetition) rather than each experiment's observed information. The
Monte Carlo (``benchmarks/experiments_sequential.py``) says how much each matters.

**Always-valid alternative** (:func:`mixture_bounds`). The two-sided normal-mixture boundary
(Robbins 1970; Howard et al. 2021, the asymptotic confidence sequence of Waudby-Smith et al.
2023): for a Gaussian process ``S`` with variance process ``v``, mixing ``exp(λS − λ²v/2)``
over ``λ ~ N(0, 1/r)`` gives a nonnegative martingale ``sqrt(r/(v+r)) exp(S²/(2(v+r)))``, and
Ville's inequality bounds by ``α`` the chance that it ever exceeds ``1/α``, i.e. that ever

    |Z| ≥ sqrt( (t + r)/t · [ ln((t + r)/r) + 2 ln(1/α) ] ),   t = v / v_planned.

It holds at any number of looks, at any times, but is valid for the noise-free (martingale)
part only: fresh noise at each look breaks the martingale, and it is conservative for a few
looks (Ville's bound is loose). ``r`` defaults to the value minimising the boundary at ``t = 1``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import optimize, stats

__all__ = [
    "MAX_LOOKS",
    "classical_bounds",
    "first_crossing",
    "group_sequential_bounds",
    "look_correlation",
    "mixture_bounds",
    "spending",
]

_Spending = Literal["obf", "pocock"]

#: The most looks a monitored experiment may plan (the boundary integrates a normal law of
#: that many dimensions at each look).
MAX_LOOKS = 20


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1) (got {alpha})")


def _fractions(fractions: Sequence[float] | np.ndarray) -> np.ndarray:
    t = np.asarray(fractions, np.float64)
    if t.ndim != 1 or not len(t) or not np.all(np.isfinite(t)):
        raise ValueError(f"fractions must be a non-empty 1-d array of finite values (got {t})")
    if t[0] <= 0 or np.any(np.diff(t) <= 0):
        raise ValueError(f"fractions must be positive and increasing (got {t})")
    return t


def spending(t: float | np.ndarray, *, alpha: float = 0.05, kind: _Spending = "obf") -> np.ndarray:
    """The two-sided ``α`` spent by information fraction ``t`` (module docstring): ``0`` at
    ``t = 0``, ``α`` at ``t ≥ 1``."""
    _check_alpha(alpha)
    t = np.clip(np.asarray(t, np.float64), 0.0, 1.0)
    if kind == "obf":
        with np.errstate(divide="ignore"):
            spent = 4 * stats.norm.sf(stats.norm.isf(alpha / 4) / np.sqrt(t))
        return np.where(t > 0, spent, 0.0)
    if kind == "pocock":
        return alpha * np.log1p((math.e - 1) * t)
    raise ValueError(f"kind must be 'obf' or 'pocock' (got {kind!r})")


def _inside(bounds: np.ndarray, correlation: np.ndarray) -> float:
    """``P(|Z_j| < b_j for every j)`` for standard normals of ``correlation``."""
    if len(bounds) == 1:
        return float(1 - 2 * stats.norm.sf(bounds[0]))
    return float(
        stats.multivariate_normal.cdf(
            bounds,
            mean=np.zeros(len(bounds)),
            cov=correlation,
            lower_limit=-bounds,
            maxpts=20_000 * len(bounds),
            abseps=1e-6,
            releps=0,
            rng=np.random.default_rng(0),
        )
    )


def _canonical(t: np.ndarray) -> np.ndarray:
    return np.sqrt(np.minimum.outer(t, t) / np.maximum.outer(t, t))


def _checked_correlation(correlation: np.ndarray | None, t: np.ndarray) -> np.ndarray:
    if correlation is None:
        return _canonical(t)
    r = np.asarray(correlation, np.float64)
    if r.shape != (len(t), len(t)) or not np.allclose(np.diag(r), 1) or not np.allclose(r, r.T):
        raise ValueError(f"correlation must be a symmetric {len(t)}×{len(t)} matrix, unit diagonal")
    return r


def group_sequential_bounds(
    fractions: Sequence[float] | np.ndarray,
    *,
    alpha: float = 0.05,
    kind: _Spending = "obf",
    correlation: np.ndarray | None = None,
    final: bool = True,
) -> np.ndarray:
    """Two-sided z boundaries at looks of information ``fractions`` (increasing; with
    ``final`` the last is the planned final look and spends what is left of ``α``; without,
    the looks so far of a longer plan) by the ``kind`` spending function (module
    docstring); ``correlation`` of the looks' z's, default the canonical
    ``sqrt(t_i / t_j)``."""
    t = _fractions(fractions)
    r = _checked_correlation(correlation, t)
    spent = spending(t, alpha=alpha, kind=kind)
    if final:
        spent[-1] = alpha
    bounds = np.empty(len(t))
    for k in range(len(t)):
        target = 1 - spent[k]

        def gap(b: float, k: int = k, target: float = target) -> float:
            return _inside(np.append(bounds[:k], b), r[: k + 1, : k + 1]) - target

        if gap(12.0) <= 0:  # nothing (left) to spend at this look
            bounds[k] = np.inf
            continue
        bounds[k] = optimize.brentq(gap, 0.5, 12.0, xtol=1e-5)
    return bounds


def classical_bounds(
    looks: int, *, alpha: float = 0.05, shape: Literal["pocock", "obf"] = "pocock"
) -> np.ndarray:
    """The classical two-sided boundaries for ``looks`` equally spaced looks: Pocock's
    constant ``c`` or O'Brien-Fleming's ``c · sqrt(K / k)``, with ``c`` such that the chance
    of ever crossing under ``H₀`` is ``alpha`` (Jennison & Turnbull 2000, tables 2.1, 2.3)."""
    if isinstance(looks, bool) or not isinstance(looks, int) or looks < 1:
        raise ValueError(f"looks must be a positive integer (got {looks!r})")
    _check_alpha(alpha)
    if shape not in ("pocock", "obf"):
        raise ValueError(f"shape must be 'pocock' or 'obf' (got {shape!r})")
    k = np.arange(1, looks + 1)
    unit = np.ones(looks) if shape == "pocock" else np.sqrt(looks / k)
    r = _canonical(k / looks)
    c = optimize.brentq(lambda c: _inside(c * unit, r) - (1 - alpha), 0.5, 10.0, xtol=1e-6)
    return c * unit


def look_correlation(variance: np.ndarray, noise_variance: np.ndarray) -> np.ndarray:
    """The correlation of the looks' z's (module docstring): ``min(V_i^s, V_j^s) /
    sqrt(V_i V_j)`` off the diagonal, from each look's total ``variance`` and its
    ``noise_variance`` part (all zero: the canonical ``sqrt(I_i / I_j)``)."""
    v = np.asarray(variance, np.float64)
    n = np.asarray(noise_variance, np.float64)
    if v.ndim != 1 or v.shape != n.shape or np.any(v <= 0) or np.any(n < 0) or np.any(n > v):
        raise ValueError("variance and noise_variance must be 1-d, 0 <= noise_variance < variance")
    r = np.minimum.outer(v - n, v - n) / np.sqrt(np.outer(v, v))
    np.fill_diagonal(r, 1.0)
    return r


def mixture_bounds(
    fractions: Sequence[float] | np.ndarray, *, alpha: float = 0.05, r: float | None = None
) -> np.ndarray:
    """The normal-mixture always-valid z boundaries at information ``fractions`` (module
    docstring), mixing precision ``r`` (default: the tightest at ``t = 1``)."""
    t = _fractions(fractions)
    _check_alpha(alpha)
    log_alpha = 2 * math.log(1 / alpha)

    def bound(t: np.ndarray | float, r: float) -> np.ndarray:
        return np.sqrt((t + r) / t * (np.log((t + r) / r) + log_alpha))

    if r is None:
        r = float(optimize.minimize_scalar(lambda x: bound(1.0, x), bounds=(1e-4, 10)).x)
    elif not r > 0:
        raise ValueError(f"r must be positive (got {r})")
    return np.asarray(bound(t, r))


def first_crossing(z: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """The index of the first look whose ``|z|`` reaches its bound, per experiment
    (``z`` of shape ``(..., K)``); ``-1`` where none does."""
    z = np.asarray(z, np.float64)
    bounds = np.asarray(bounds, np.float64)
    if z.shape[-1] != len(bounds):
        raise ValueError(f"z has {z.shape[-1]} looks; bounds {len(bounds)}")
    crossed = np.abs(z) >= bounds
    return np.where(crossed.any(axis=-1), crossed.argmax(axis=-1), -1)
