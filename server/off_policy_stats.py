"""Off-policy evaluation's report from the noisy sums of the devices' contributions.

**Layout** (``stamen.models.off_policy``; the device builds it in
``stamen.client.device.off_policy``). Each person ``i`` contributes first moments
``z_i = [n, g, a_1, b_1, …, a_K, b_K]`` (``d = 2 + 2K``, every entry in ``[0, 1]``: slots,
logging rewards, candidate ``c``'s clipped importance-weighted rewards and weights, each
divided by its bound) followed by the upper triangle of ``z_i z_iᵀ`` (``numpy.triu_indices``).
The server receives ``T = Σ_i z_i + e`` and ``M = Σ_i z_i z_iᵀ + E`` (upper triangle), the
noise Gaussian with standard deviation ``σ`` on every coordinate, independent (``σ = 0``
without DP).

**Estimates**, each a ratio of sums (``W_c``: candidate ``c``'s weight clip):

    logging value  V     = T_g / T_n                  (Σ r / Σ slots)
    IPS            IPS_c = W_c · T_{a_c} / T_n        (Σ w r / Σ slots)
    SNIPS          SN_c  = T_{a_c} / T_{b_c}          (Σ w r / Σ w)
    effects        IPS_c − V,  SN_c − V

**Variance (delta method over people).** Every estimate is a smooth function ``f(T)``,
homogeneous of degree 0 (a ratio, or a difference of ratios, of sums). Linearise around the
clear sums ``τ = Σ_i z_i``, with gradient ``h = ∇f(τ)``::

    f(T) − f(τ) ≈ h · e,        f(τ) − f(E τ) ≈ Σ_i h · (z_i − E z_i)

Treating people as independent draws, the sampling part has variance estimated by
``Σ_i (h · z_i − h · z̄)²``; Euler's theorem for a degree-0 function gives ``h · τ = 0``, so
``h · z̄ = 0`` and it is ``Σ_i (h · z_i)² = hᵀ (Σ_i z_i z_iᵀ) h``. For ``f = T_1 / T_0`` this is
``Σ_i (z_{i1} − f z_{i0})² / τ_0²``, the ratio estimator's usual ``Q / n²``
(``stamen.server.experiment_stats``). The noise part, independent of it, has variance
``σ² ‖h‖²``. So

    Var(f̂) ≈ hᵀ M h + σ² ‖h‖²

estimated by plugging in the noisy ``T`` (for ``h``) and ``M``; the quadratic form is clipped
at 0 (noise can make ``M`` indefinite; the clip makes the interval conservative there, as in
``experiment_stats``). Gradients: for ``V``, ``h_g = 1/T_n`` and ``h_n = −V/T_n``; for
``IPS_c``, ``h_{a_c} = W_c/T_n`` and ``h_n = −IPS_c/T_n``; for ``SN_c``, ``h_{a_c} = 1/T_{b_c}``
and ``h_{b_c} = −SN_c/T_{b_c}``; an effect's gradient is the difference of its two terms'
(the candidate's and the logging policy's values share people and, for IPS, the slot sum
``T_n``: their covariance is in ``hᵀ M h``). For example ``IPS_c − V`` has noise variance
``σ² (W_c² + 1 + (IPS_c − V)²) / T_n²``.

The ``1 − α`` interval is ``f̂ ± z_{1−α/2} sqrt(Var)``, the two-sided p-value of an effect
``2 (1 − Φ(|f̂| / sqrt(Var)))``: the noise is Gaussian, the sampling part normal by the central
limit theorem over people (which needs many people with slots the candidate favours: with
little overlap between the policies, IPS rests on a few large weights and its interval
under-covers).

The mechanism: ``experiment_mechanism`` of ``stamen.server.experiment_stats`` with the
contributions' sensitivity (``stamen.client.device.off_policy.sensitivity``): one release per
evaluation, its own accountant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from stamen.models.off_policy import sensitivity, width
from stamen.privacy.dp.gaussian import GaussianSum
from stamen.privacy.dp.user import UserDP
from stamen.server.experiment_stats import experiment_mechanism, json_ready

__all__ = [
    "CandidateEstimate",
    "OffPolicyReport",
    "moments",
    "off_policy_estimates",
    "off_policy_mechanism",
    "off_policy_report",
]


def off_policy_mechanism(
    privacy: UserDP, *, population: int, candidates: int, seed: int
) -> GaussianSum | None:
    """The Gaussian-sum mechanism of one evaluation's release over ``population`` devices
    (``None`` when DP is off): ``experiment_mechanism`` with the contributions' L2
    sensitivity ``sqrt(d + d (d + 1) / 2)``, ``d = 2 + 2 · candidates`` (every coordinate of a
    person's vector lies in ``[0, 1]``; ``stamen.client.device.off_policy.sensitivity``)."""
    return experiment_mechanism(
        privacy, population=population, sensitivity=sensitivity(candidates), seed=seed
    )


def moments(sums: np.ndarray, candidates: int) -> tuple[np.ndarray, np.ndarray]:
    """The first-moment sums ``T`` (shape ``(..., d)``) and the symmetric second-moment
    matrix ``M`` (shape ``(..., d, d)``) from released ``sums`` of shape ``(..., width)``.

    Raises:
        ValueError: ``sums`` does not end in ``d + d (d + 1) / 2`` coordinates.
    """
    sums = np.asarray(sums, np.float64)
    expected, d = width(candidates), 2 + 2 * candidates
    if sums.shape[-1] != expected:
        raise ValueError(
            f"sums end in {sums.shape[-1]} coordinates; expected {expected} "
            f"for {candidates} candidates"
        )
    rows, cols = np.triu_indices(d)
    second = np.zeros((*sums.shape[:-1], d, d))
    second[..., rows, cols] = sums[..., d:]
    second[..., cols, rows] = sums[..., d:]
    return sums[..., :d], second


def off_policy_estimates(
    sums: np.ndarray,
    *,
    candidates: int,
    max_weights: Sequence[float] | np.ndarray,
    noise_std: float,
    alpha: float = 0.05,
) -> dict[str, np.ndarray]:
    """Every estimate of the module docstring from ``sums`` of shape ``(..., width)``: keys
    ``logging`` (shape ``(...)``), ``ips``, ``snips``, ``ips_effect``, ``snips_effect`` (shape
    ``(..., K)``; an effect is the candidate's value minus the logging policy's), each with
    ``<key>_stderr``, ``<key>_lower``, ``<key>_upper``, and ``<effect>_p_value`` for the two
    effects. NaN where a denominator is not positive.

    Raises:
        ValueError: a bad shape, ``noise_std < 0``, ``alpha`` outside ``(0, 1)`` or
            ``max_weights`` not one positive number per candidate.
    """
    total, second = moments(sums, candidates)
    clip = np.asarray(max_weights, np.float64)
    if clip.shape != (candidates,) or not np.all(clip > 0):
        raise ValueError(f"max_weights must be {candidates} positive numbers (got {clip})")
    if not noise_std >= 0:
        raise ValueError(f"noise_std must be non-negative (got {noise_std})")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1) (got {alpha})")
    d = total.shape[-1]
    a_idx, b_idx = 2 + 2 * np.arange(candidates), 3 + 2 * np.arange(candidates)
    slots = np.where(total[..., 0] > 0, total[..., 0], np.nan)
    weights = np.where(total[..., b_idx] > 0, total[..., b_idx], np.nan)
    logging = total[..., 1] / slots
    ips = clip * total[..., a_idx] / slots[..., None]
    snips = total[..., a_idx] / weights
    # Gradients, shape (..., K, d) for the candidates and (..., d) for the logging policy.
    grad_log = np.zeros((*total.shape[:-1], d))
    grad_log[..., 0], grad_log[..., 1] = -logging / slots, 1.0 / slots
    grad_ips = np.zeros((*total.shape[:-1], candidates, d))
    grad_snips = np.zeros_like(grad_ips)
    k = np.arange(candidates)
    grad_ips[..., 0] = -ips / slots[..., None]
    grad_ips[..., k, a_idx] = clip / slots[..., None]
    grad_snips[..., k, a_idx] = 1.0 / weights
    grad_snips[..., k, b_idx] = -snips / weights
    values = {
        "logging": (logging, grad_log),
        "ips": (ips, grad_ips),
        "snips": (snips, grad_snips),
        "ips_effect": (ips - logging[..., None], grad_ips - grad_log[..., None, :]),
        "snips_effect": (snips - logging[..., None], grad_snips - grad_log[..., None, :]),
    }
    z = stats.norm.ppf(1 - alpha / 2)
    out: dict[str, np.ndarray] = {}
    for key, (value, grad) in values.items():
        lead = grad.ndim - total.ndim  # 0 for the logging policy, 1 for the candidates
        m = second.reshape(second.shape[:-2] + (1,) * lead + second.shape[-2:])
        sampling = np.maximum(np.einsum("...i,...ij,...j->...", grad, m, grad), 0.0)
        stderr = np.sqrt(sampling + noise_std**2 * np.sum(grad**2, axis=-1))
        out[key] = value
        out[f"{key}_stderr"] = stderr
        out[f"{key}_lower"] = value - z * stderr
        out[f"{key}_upper"] = value + z * stderr
        if key.endswith("effect"):
            with np.errstate(divide="ignore", invalid="ignore"):
                out[f"{key}_p_value"] = 2 * stats.norm.sf(np.abs(value) / stderr)
    return out


@dataclass(frozen=True)
class CandidateEstimate:
    """One candidate by one estimator (``ips`` or ``snips``): its value per slot with its
    standard error and interval, and its effect against the logging policy (candidate −
    logging) with standard error, interval and two-sided p-value."""

    candidate: str
    estimator: str
    value: float
    stderr: float
    lower: float
    upper: float
    effect: float
    effect_stderr: float
    effect_lower: float
    effect_upper: float
    p_value: float

    @property
    def significant(self) -> bool:
        """Whether the effect's interval excludes zero."""
        return bool(self.effect_lower > 0 or self.effect_upper < 0)


@dataclass(frozen=True)
class OffPolicyReport:
    """What the server reports of one off-policy evaluation: the logging policy's value per
    slot (``value``, ``stderr``, ``lower``, ``upper``), each candidate's estimates, the
    confidence level, the noise and the privacy spent."""

    evaluation: str
    alpha: float
    noise_std: float
    logging: dict[str, float]
    candidates: list[CandidateEstimate]
    privacy: dict[str, Any] = field(default_factory=dict)

    def estimate(self, candidate: str, estimator: str = "snips") -> CandidateEstimate:
        """The estimate of ``candidate`` by ``estimator``."""
        for e in self.candidates:
            if e.candidate == candidate and e.estimator == estimator:
                return e
        raise KeyError(f"no {estimator!r} estimate of candidate {candidate!r}")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN and infinities as ``null``)."""
        return json_ready(asdict(self))


def off_policy_report(
    sums: np.ndarray,
    *,
    evaluation: str,
    candidates: Sequence[str],
    max_weights: Sequence[float],
    noise_std: float,
    alpha: float = 0.05,
    privacy: dict[str, Any] | None = None,
) -> OffPolicyReport:
    """The report of one evaluation from its released ``sums`` (shape ``(width,)``)."""
    sums = np.asarray(sums, np.float64)
    if sums.ndim != 1:
        raise ValueError(f"sums must be one released vector (got shape {sums.shape})")
    est = off_policy_estimates(
        sums,
        candidates=len(candidates),
        max_weights=max_weights,
        noise_std=noise_std,
        alpha=alpha,
    )
    rows = [
        CandidateEstimate(
            candidate=name,
            estimator=kind,
            value=float(est[kind][c]),
            stderr=float(est[f"{kind}_stderr"][c]),
            lower=float(est[f"{kind}_lower"][c]),
            upper=float(est[f"{kind}_upper"][c]),
            effect=float(est[f"{kind}_effect"][c]),
            effect_stderr=float(est[f"{kind}_effect_stderr"][c]),
            effect_lower=float(est[f"{kind}_effect_lower"][c]),
            effect_upper=float(est[f"{kind}_effect_upper"][c]),
            p_value=float(est[f"{kind}_effect_p_value"][c]),
        )
        for c, name in enumerate(candidates)
        for kind in ("ips", "snips")
    ]
    logging = {
        key: float(est["logging" + suffix])
        for key, suffix in (("value", ""), ("stderr", "_stderr"), ("lower", "_lower"))
    }
    logging["upper"] = float(est["logging_upper"])
    return OffPolicyReport(
        evaluation=evaluation,
        alpha=alpha,
        noise_std=float(noise_std),
        logging=logging,
        candidates=rows,
        privacy=dict(privacy or {"epsilon": float("inf"), "mode": "off"}),
    )
