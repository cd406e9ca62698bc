"""An experiment's report from the noisy per-arm sums of the devices' contributions.

Each device contributes, in its arm's block, ``[1, y_1, y_1², …, y_M, y_M²]`` with every
``y_m ∈ [0, 1]`` (its metric value divided by the metric's bound, ``scales[m]``), zeros in
the other arms' blocks (``stamen.client.device.experiments``). The server receives, per arm
and coordinate, the sum plus Gaussian noise of known standard deviation ``σ`` (the same on
every coordinate, independent between coordinates; ``σ = 0`` without DP):

    N  = n    + e_0          (exposed people in the arm)
    S₁ = Σ y  + e_1          (per metric)
    S₂ = Σ y² + e_2

**Mean.** ``μ̂ = S₁ / N`` (a ratio estimator: the count is noisy too), reported in the metric's
own units as ``scale · μ̂``.

**Its variance (delta method).** Treat the arm's people as draws from a population and
linearise ``S₁ / N`` around ``(Σy, n)``: with ``μ = Σy / n``,

    S₁ / N − μ ≈ [ (Σy − n μ) + e_1 − μ e_0 ] / n

The sampling part has variance ``Σ(y_i − μ)² / n²`` (the usual ``s² / n``), and the noise
part, independent of it, ``σ² (1 + μ²) / n²``. So

    Var(μ̂) ≈ [ Q + σ² (1 + μ²) ] / n²,    Q = Σ(y_i − μ)² = Σy² − (Σy)² / n

estimated by plugging in ``Q̂ = max(S₂ − S₁² / N, 0)``, ``μ̂`` and ``N`` (``Var`` in the metric's
units: times ``scale²``). Without noise it is the ordinary ``s² / n``. The noise on ``S₂``
enters only ``Q̂``: where ``Q`` is large against ``σ`` its error is negligible; where it is
not (a rare metric under strong noise, such as a ``not_interested`` rate at ε = 1), the clip
at 0 biases ``Q̂`` upwards by up to about ``0.4 σ``, so the variance is conservative there (the
interval slightly too wide, the false-positive rate slightly below α).

**Effect.** For a treatment arm ``B`` against the control ``A`` (disjoint people, independent
noise): ``Δ̂ = μ̂_B − μ̂_A``, ``Var(Δ̂) = Var(μ̂_A) + Var(μ̂_B)``, the ``1 − α`` interval
``Δ̂ ± z_{1−α/2} · sqrt(Var(Δ̂))`` and the two-sided p-value ``2 · (1 − Φ(|Δ̂| / sqrt(Var(Δ̂))))``
(normal: the noise is Gaussian, the sampling part by the central limit theorem). The relative
lift ``μ̂_B / μ̂_A − 1`` has, by the delta method, ``Var ≈ [Var(μ̂_B) + (μ̂_B/μ̂_A)² Var(μ̂_A)] / μ̂_A²``.

**CUPED** (pre-experiment covariates, optional: ``covariates=True``). With the covariate
layout each metric's block is ``[y, y², x, x², x·y]`` (``x``: the same metric over a
pre-period before the assignment took effect). With ``Q_xy = Σxy − Σx Σy / n`` and so on over
all arms' noisy sums pooled (the arms' ``x`` share one distribution: assignment is random),
the coefficient is the one that minimises the variance below, noise included, summed over
the ``A`` arms:

    θ = (Q_xy + A σ² μ_x μ_y) / (Q_xx + A σ² (1 + μ_x²))      (pooled means μ_x, μ_y)

the usual ``Q_xy / Q_xx`` without noise; with noise the ``σ²`` terms shrink it towards 0 (a
ridge: the noise on ``Σx`` enters the adjusted mean times ``θ``), which also keeps a noisy,
nearly-zero ``Q_xx`` from blowing ``θ`` up. Each arm's adjusted mean

    μ̂_adj = μ̂_y − θ (μ̂_x − x̄),    x̄ = the pooled mean of x (cancels in every effect)

is the ratio estimator of ``z = y − θ x`` (plus a constant). Treating ``θ`` as fixed (its
error moves the effect at second order only) and linearising as above, the noise part is
``e_y − θ e_x − μ_z e_0``, so

    Var(μ̂_adj) ≈ [ Q_z + σ² (1 + θ² + μ_z²) ] / n²,   Q_z = Q_yy − 2θ Q_xy + θ² Q_xx ≥ 0

(``μ_z = μ̂_y − θ μ̂_x``; without noise the usual CUPED variance ``s_y² (1 − ρ²) / n`` at the
optimal θ). :func:`cuped_estimates` also returns the unadjusted figures from the same sums, so
the variance reduction ``1 − Var(Δ̂_adj) / Var(Δ̂)`` can be reported.

The privacy side: :func:`experiment_mechanism` builds the Gaussian-sum mechanism of the
training rounds (``stamen.privacy.dp.gaussian``), with its own accountant, for one
experiment's measurement releases: ε is reported per experiment and separately from
training's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from stamen.privacy.dp.gaussian import GaussianSum
from stamen.privacy.dp.streams import Purpose
from stamen.privacy.dp.user import UserDP

__all__ = [
    "ArmSummary",
    "CupedAdjustment",
    "Effect",
    "ExperimentReport",
    "arm_estimates",
    "cuped_estimates",
    "effect_estimates",
    "experiment_mechanism",
    "experiment_report",
    "json_ready",
    "outcome_sums",
]


def _checked(
    sums: np.ndarray, noise_std: float, scales: Sequence[float] | np.ndarray, per_metric: int
) -> tuple[np.ndarray, np.ndarray]:
    sums = np.asarray(sums, np.float64)
    scales = np.asarray(scales, np.float64)
    if sums.shape[-1] != 1 + per_metric * len(scales):
        raise ValueError(
            f"sums end in {sums.shape[-1]} coordinates; expected 1 + {per_metric}·{len(scales)}"
        )
    if not noise_std >= 0:
        raise ValueError(f"noise_std must be non-negative (got {noise_std})")
    return sums, scales


def outcome_sums(sums: np.ndarray) -> np.ndarray:
    """The default layout's coordinates ``[n, Σy_1, Σy_1², …]`` of sums in the covariate
    layout (``(..., 1 + 5M)`` to ``(..., 1 + 2M)``)."""
    sums = np.asarray(sums, np.float64)
    if (sums.shape[-1] - 1) % 5:
        raise ValueError(f"sums end in {sums.shape[-1]} coordinates; expected 1 + 5·M")
    metrics = (sums.shape[-1] - 1) // 5
    keep = [0, *(1 + 5 * m + j for m in range(metrics) for j in (0, 1))]
    return sums[..., keep]


def arm_estimates(
    sums: np.ndarray,
    *,
    noise_std: float,
    scales: Sequence[float] | np.ndarray,
    covariates: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each arm's mean of each metric, its variance (sampling and noise: module docstring)
    and the arm's noisy count, from ``sums`` of shape ``(..., arms, 1 + 2M)``; with
    ``covariates``, the CUPED-adjusted means from sums of shape ``(..., arms, 1 + 5M)``
    (:func:`cuped_estimates`).

    Returns ``(mean, variance, n)`` of shapes ``(..., arms, M)``, ``(..., arms, M)`` and
    ``(..., arms)``, in the metrics' units (NaN where the noisy count is not positive).
    """
    if covariates:
        found = cuped_estimates(sums, noise_std=noise_std, scales=scales)
        return found["mean"], found["variance"], found["n"]
    sums, scales = _checked(sums, noise_std, scales, 2)
    n = sums[..., 0]
    n_safe = np.where(n > 0, n, np.nan)[..., None]
    s1, s2 = sums[..., 1::2], sums[..., 2::2]
    mean = s1 / n_safe
    spread = np.maximum(s2 - s1 * mean, 0.0)
    variance = (spread + noise_std**2 * (1.0 + mean**2)) / n_safe**2
    return mean * scales, variance * scales**2, n


def cuped_estimates(
    sums: np.ndarray, *, noise_std: float, scales: Sequence[float] | np.ndarray
) -> dict[str, np.ndarray]:
    """CUPED estimates (module docstring) from sums in the covariate layout, shape
    ``(..., arms, 1 + 5M)``: ``mean`` and ``variance`` (adjusted, ``(..., arms, M)``, metric
    units), its part due to the noise ``noise_variance`` (at the same ``θ``), ``n``
    (``(..., arms)``), ``theta`` (``(..., M)``, pooled over arms) and the unadjusted
    ``plain_mean`` and ``plain_variance`` of the same sums."""
    sums, scales = _checked(sums, noise_std, scales, 5)
    plain_mean, plain_variance, n = arm_estimates(
        outcome_sums(sums), noise_std=noise_std, scales=scales
    )
    sy, syy, sx, sxx, sxy = (sums[..., 1 + j :: 5] for j in range(5))

    def spread(a: np.ndarray, b: np.ndarray, ab: np.ndarray, count: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return ab - a * b / count

    pooled = sums.sum(axis=-2)
    n_pool = np.where(pooled[..., :1] > 0, pooled[..., :1], np.nan)
    p_y, p_x, p_xx, p_xy = (pooled[..., 1 + j :: 5] for j in (0, 2, 3, 4))
    ridge = sums.shape[-2] * noise_std**2
    q_xx = spread(p_x, p_x, p_xx, n_pool) + ridge * (1 + (p_x / n_pool) ** 2)
    q_xy = spread(p_x, p_y, p_xy, n_pool) + ridge * p_x * p_y / n_pool**2
    with np.errstate(divide="ignore", invalid="ignore"):
        theta = np.where(q_xx > 0, q_xy / q_xx, 0.0)
    theta = np.nan_to_num(theta)
    t = theta[..., None, :]
    count = np.where(n > 0, n, np.nan)[..., None]
    q_z = spread(sy, sy, syy, count) - 2 * t * spread(sx, sy, sxy, count)
    q_z = np.maximum(q_z + t**2 * spread(sx, sx, sxx, count), 0.0)
    mu_y, mu_x = sy / count, sx / count
    mu_z = mu_y - t * mu_x
    mean = mu_y - t * (mu_x - (p_x / n_pool)[..., None, :])
    noise = noise_std**2 * (1.0 + t**2 + mu_z**2) / count**2
    return {
        "mean": mean * scales,
        "variance": (q_z / count**2 + noise) * scales**2,
        "noise_variance": noise * scales**2,
        "n": n,
        "theta": theta,
        "plain_mean": plain_mean,
        "plain_variance": plain_variance,
    }


def effect_estimates(
    mean: np.ndarray, variance: np.ndarray, *, control: int = 0, alpha: float = 0.05
) -> dict[str, np.ndarray]:
    """Every arm's effect against arm ``control`` from :func:`arm_estimates`' ``mean`` and
    ``variance`` (shape ``(..., arms, M)``): ``effect``, ``stderr``, ``lower``, ``upper``,
    ``p_value``, ``lift``, ``lift_lower``, ``lift_upper``, each ``(..., arms, M)`` (the
    control's own row is zero effect with NaN p-value)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1) (got {alpha})")
    base, base_var = mean[..., control : control + 1, :], variance[..., control : control + 1, :]
    effect = mean - base
    var = variance + base_var
    z = stats.norm.ppf(1 - alpha / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        stderr = np.sqrt(var)
        p_value = 2 * stats.norm.sf(np.abs(effect) / stderr)
        # a relative lift needs a positive control mean (noise can push it to or below 0)
        ratio = np.where(base > 0, mean / base, np.nan)
        lift_se = np.sqrt(variance + ratio**2 * base_var) / np.abs(base)
    own = np.zeros(mean.shape[-2], bool)
    own[control] = True
    stderr = np.where(own[:, None], 0.0, stderr)
    p_value = np.where(own[:, None], np.nan, p_value)
    lift = ratio - 1
    lift_se = np.where(own[:, None], 0.0, lift_se)
    return {
        "effect": effect,
        "stderr": stderr,
        "lower": effect - z * stderr,
        "upper": effect + z * stderr,
        "p_value": p_value,
        "lift": lift,
        "lift_lower": lift - z * lift_se,
        "lift_upper": lift + z * lift_se,
    }


@dataclass(frozen=True)
class ArmSummary:
    """One arm of a report: its name, noisy count of exposed people, and per metric the
    mean and its standard error (sampling and noise)."""

    name: str
    exposed: float
    means: dict[str, float]
    stderrs: dict[str, float]


@dataclass(frozen=True)
class Effect:
    """A treatment arm against the control on one metric: the difference of means
    (treatment − control) with its interval and p-value, and the relative lift with its
    interval."""

    arm: str
    metric: str
    effect: float
    stderr: float
    lower: float
    upper: float
    p_value: float
    lift: float
    lift_lower: float
    lift_upper: float

    @property
    def significant(self) -> bool:
        """Whether the interval excludes zero."""
        return bool(self.lower > 0 or self.upper < 0)


@dataclass(frozen=True)
class CupedAdjustment:
    """The CUPED-adjusted figures of a report (module docstring): each metric's coefficient
    ``theta`` (pooled over the arms), each arm's adjusted means with their standard errors,
    and each treatment's adjusted effect with its interval and p-value."""

    theta: dict[str, float]
    arms: list[ArmSummary]
    effects: list[Effect]


@dataclass(frozen=True)
class ExperimentReport:
    """What the server reports of an experiment: each arm, each treatment's effect on each
    metric, the confidence level, the noise and the privacy spent (``epsilon`` per
    experiment, separate from training's); with pre-experiment covariates, ``cuped``: the
    adjusted figures beside these unadjusted ones."""

    experiment: str
    control: str
    alpha: float
    noise_std: float
    arms: list[ArmSummary]
    effects: list[Effect]
    privacy: dict[str, Any] = field(default_factory=dict)
    cuped: CupedAdjustment | None = None

    def effect(self, arm: str, metric: str) -> Effect:
        """The effect of ``arm`` on ``metric``."""
        for e in self.effects:
            if e.arm == arm and e.metric == metric:
                return e
        raise KeyError(f"no effect of arm {arm!r} on metric {metric!r}")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN and infinities as ``null``)."""
        return json_ready(asdict(self))


def json_ready(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` with every NaN and infinity (at any depth) as ``None``; raises here, not
    at the caller's, on a value JSON cannot hold."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not np.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    result = clean(report)
    json.dumps(result)
    return dict(result)


def _summaries(
    mean: np.ndarray,
    variance: np.ndarray,
    n: np.ndarray,
    *,
    arms: Sequence[str],
    metrics: Sequence[str],
    control: int,
    alpha: float,
) -> tuple[list[ArmSummary], list[Effect]]:
    """Each arm's summary and each treatment's effects from :func:`arm_estimates`' figures."""
    est = effect_estimates(mean, variance, control=control, alpha=alpha)
    summaries = [
        ArmSummary(
            name=name,
            exposed=float(n[a]),
            means={m: float(mean[a, j]) for j, m in enumerate(metrics)},
            stderrs={m: float(np.sqrt(variance[a, j])) for j, m in enumerate(metrics)},
        )
        for a, name in enumerate(arms)
    ]
    effects = [
        Effect(arm=name, metric=m, **{k: float(v[a, j]) for k, v in est.items()})
        for a, name in enumerate(arms)
        if a != control
        for j, m in enumerate(metrics)
    ]
    return summaries, effects


def experiment_report(
    sums: np.ndarray,
    *,
    experiment: str,
    arms: Sequence[str],
    metrics: Sequence[str],
    scales: Sequence[float],
    noise_std: float,
    control: int = 0,
    alpha: float = 0.05,
    privacy: dict[str, Any] | None = None,
    covariates: bool = False,
) -> ExperimentReport:
    """The report of one experiment from its released sums, shape ``(arms, 1 + 2M)``; with
    ``covariates``, sums of shape ``(arms, 1 + 5M)``: the unadjusted figures of their outcome
    part and, in ``cuped``, the adjusted ones (:func:`cuped_estimates`)."""
    sums = np.asarray(sums, np.float64)
    if sums.shape != (len(arms), 1 + (5 if covariates else 2) * len(metrics)):
        raise ValueError(f"sums of shape {sums.shape} for {len(arms)} arms, {len(metrics)} metrics")

    def summaries_of(
        mean: np.ndarray, variance: np.ndarray, n: np.ndarray
    ) -> tuple[list[ArmSummary], list[Effect]]:
        return _summaries(
            mean, variance, n, arms=arms, metrics=metrics, control=control, alpha=alpha
        )

    cuped = None
    if covariates:
        found = cuped_estimates(sums, noise_std=noise_std, scales=scales)
        adjusted = summaries_of(found["mean"], found["variance"], found["n"])
        theta = {m: float(found["theta"][j]) for j, m in enumerate(metrics)}
        cuped = CupedAdjustment(theta=theta, arms=adjusted[0], effects=adjusted[1])
        sums = outcome_sums(sums)
    summaries, effects = summaries_of(*arm_estimates(sums, noise_std=noise_std, scales=scales))
    return ExperimentReport(
        experiment=experiment,
        control=arms[control],
        alpha=alpha,
        noise_std=float(noise_std),
        arms=summaries,
        effects=effects,
        privacy=dict(privacy or {"epsilon": float("inf"), "mode": "off"}),
        cuped=cuped,
    )


def experiment_mechanism(
    privacy: UserDP, *, population: int, sensitivity: float, seed: int, rounds: int = 1
) -> GaussianSum | None:
    """The Gaussian-sum mechanism of one experiment's ``rounds`` measurement releases over
    all ``population`` devices (``None`` when DP is off), with an accountant of its own:
    ``privacy``'s mode, ε target and δ (default ``1 / population``), its clip norm replaced by
    the contributions' ``sensitivity``."""
    if not privacy.enabled:
        return None
    settings = UserDP(**{**privacy.model_dump(), "clip_norm": float(sensitivity)})
    return settings.mechanism(
        population=population,
        cohort=population,
        rounds=rounds,
        seed=seed,
        purpose=Purpose.EXPERIMENT,
    )
