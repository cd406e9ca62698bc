"""Many repeated experiments at once, without Flower: assign, measure, sum, add the noise,
report.

For each of ``repetitions`` independent experiments over one population:

1. every person gets an assignment unit ``u ∈ [0, 1)`` and the arm it falls in
   (``Experiment.arm_of``). On a device ``u`` is the HMAC of the experiment's id and salt
   under the device's secret (``stamen.client.device.experiments.assign``); here, by default,
   a fresh uniform draw per repetition stands in for it (HMAC-SHA256 is a pseudo-random
   function, and ``tests/client/device/test_experiments.py`` checks that its units are
   uniform); :func:`hmac_units` computes the real ones (one HMAC per person);
2. the response simulator draws every person's counts under their arm's lists
   (``stamen.simulation.experiments.response``) and their contribution vectors, by the
   device's own functions, are summed (``summed_contributions``: the sum of
   ``contributions`` without building every vector);
3. the sums are released through the experiment's Gaussian-sum mechanism
   (``stamen.server.experiment_stats.experiment_mechanism``, the mechanism training uses):
   ``central``: the server's noise; ``distributed``: the devices' noise shares, drawn here as
   one sum (every device reports, so the shares add up to the full ``σ``). Each repetition is
   its own experiment with one release: the mechanism's accountant is charged once, and the
   ε it reports is the ε of each experiment;
4. :func:`estimates` turns the released sums into means, effects, intervals and p-values
   (``stamen.server.experiment_stats``).

The people's draws do not depend on the privacy setting, so :func:`clear_sums` runs once and
:func:`release` once per setting.

**Looks and covariates.** :func:`clear_look_sums` measures each experiment at ``looks``
cumulative windows (``response.simulate_windows``), optionally with a pre-period window under
the control's lists as the CUPED covariate (the covariate layout of
``stamen.client.device.experiments``); :func:`release` with ``looks=True`` releases every
look afresh (one release per look, the accountant composing them: the ε reported is the
whole experiment's); :func:`look_statistics` gives each look's z, its variance and the
noise's part of it (for ``stamen.server.experiment_monitoring``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from stamen.client.device.experiments import Experiment, assignment_unit, summed_contributions
from stamen.models.experiments import STATISTICS, MetricBounds, sensitivity, statistics
from stamen.privacy.dp.user import UserDP
from stamen.server.experiment_stats import (
    arm_estimates,
    cuped_estimates,
    effect_estimates,
    experiment_mechanism,
)
from stamen.simulation.experiments.response import (
    Population,
    ResponseModel,
    VariantResponse,
    cumulative_counts,
    simulate_counts,
    simulate_windows,
)

__all__ = [
    "Released",
    "experiment_privacy",
    "clear_look_sums",
    "clear_sums",
    "estimates",
    "hmac_units",
    "look_statistics",
    "release",
]


def hmac_units(experiment: Experiment, secrets: list[bytes]) -> np.ndarray:
    """Each device's assignment unit, by its own HMAC (one call per device)."""
    return np.array([assignment_unit(experiment, device_secret=s) for s in secrets])


def experiment_privacy(epsilon: float, mode: str, population: int) -> UserDP:
    """An experiment's user-level DP at ``epsilon`` (∞: off) in ``mode`` (``central`` or
    ``distributed``), δ = 1 / population."""
    if math.isinf(epsilon):
        return UserDP()
    return UserDP(mode=mode, target_epsilon=epsilon, delta=1.0 / population)  # type: ignore[arg-type]


def clear_sums(
    population: Population,
    responses: list[VariantResponse],
    experiment: Experiment,
    *,
    repetitions: int,
    seed: int,
    model: ResponseModel,
    bounds: MetricBounds,
    units: np.ndarray | None = None,
) -> np.ndarray:
    """The noise-free sums of ``repetitions`` experiments, shape
    ``(repetitions, arms, len(STATISTICS))``; ``responses[a]`` is arm ``a``'s variant, and
    ``units`` fixed assignment units (default: fresh uniform units per repetition)."""
    n_arms = len(experiment.arms)
    if len(responses) != n_arms:
        raise ValueError(f"{len(responses)} variants for {n_arms} arms")
    rng = np.random.default_rng([seed, 28, 1])
    out = np.empty((repetitions, n_arms, len(STATISTICS)))
    for r in range(repetitions):
        u = rng.random(population.size) if units is None else units
        arms = np.asarray(experiment.arm_of(u))
        counts = simulate_counts(population, responses, arms, model, rng)
        out[r] = summed_contributions(arms, counts, n_arms=n_arms, bounds=bounds)
    return out


def clear_look_sums(
    population: Population,
    responses: list[VariantResponse],
    experiment: Experiment,
    *,
    looks: int,
    repetitions: int,
    seed: int,
    model: ResponseModel,
    bounds: MetricBounds,
    covariates: bool = False,
) -> np.ndarray:
    """The noise-free sums of ``repetitions`` experiments at each of ``looks`` cumulative
    windows, shape ``(repetitions, looks, arms, width)`` (``width``: the length of
    ``statistics(covariates=covariates)``; the covariate is each person's pre-period window
    under ``responses[0]``, the control's lists)."""
    n_arms = len(experiment.arms)
    if len(responses) != n_arms:
        raise ValueError(f"{len(responses)} variants for {n_arms} arms")
    rng = np.random.default_rng([seed, 28, 2])
    out = np.empty((repetitions, looks, n_arms, len(statistics(covariates=covariates))))
    control = np.zeros(population.size, np.int64)
    for r in range(repetitions):
        arms = np.asarray(experiment.arm_of(rng.random(population.size)))
        pre = (
            simulate_counts(population, responses[:1], control, model, rng) if covariates else None
        )
        windows = simulate_windows(population, responses, arms, model, rng, windows=looks)
        for k, counts in enumerate(cumulative_counts(windows)):
            out[r, k] = summed_contributions(arms, counts, n_arms=n_arms, bounds=bounds, pre=pre)
    return out


@dataclass(frozen=True)
class Released:
    """Released sums (shape as ``clear_sums``'), the noise's standard deviation on each
    coordinate and the privacy report of each experiment (ε, δ, z, mode)."""

    sums: np.ndarray
    noise_std: float
    privacy: dict[str, Any]


def release(
    clear: np.ndarray,
    *,
    privacy: UserDP,
    population: int,
    seed: int,
    looks: bool = False,
    covariates: bool = False,
) -> Released:
    """Release every repetition's sums through the experiment's mechanism (module
    docstring): one release per experiment, or with ``looks`` (``clear`` of shape
    ``(repetitions, looks, arms, width)``) one per look, fresh noise each, the accountant
    composing them; ``covariates``: the sums are in the covariate layout (its sensitivity)."""
    rounds = clear.shape[1] if looks else 1
    mechanism = experiment_mechanism(
        privacy,
        population=population,
        sensitivity=sensitivity(covariates=covariates),
        seed=seed,
        rounds=rounds,
    )
    if mechanism is None:
        return Released(clear.copy(), 0.0, {"epsilon": float("inf"), "mode": "off"})
    parts = [clear[:, k] for k in range(rounds)] if looks else [clear]
    for rnd, part in enumerate(parts):
        total = part
        if mechanism.mode == "distributed":
            shares = mechanism.share_std(population) * np.sqrt(population)
            total = part + mechanism.streams.noise_shares(rnd).normal(0.0, shares, part.shape)
        parts[rnd] = mechanism.release_sum(total, rnd=rnd)
    noisy = np.stack(parts, axis=1) if looks else parts[0]
    report = mechanism.report()
    report["epsilon"] = mechanism.accountant.epsilon
    return Released(noisy, mechanism.sigma, report)


def estimates(
    released: Released,
    *,
    bounds: MetricBounds,
    control: int = 0,
    alpha: float = 0.05,
    covariates: bool = False,
) -> dict[str, np.ndarray]:
    """Every repetition's arm means (``mean``, ``variance``, ``n``) and effects against arm
    ``control`` (``effect_estimates``' arrays), shape ``(repetitions, arms, metrics)``
    (``(repetitions, looks, arms, metrics)`` for released looks; ``covariates``: CUPED)."""
    mean, variance, n = arm_estimates(
        released.sums,
        noise_std=released.noise_std,
        scales=bounds.bounds(),
        covariates=covariates,
    )
    return {
        "mean": mean,
        "variance": variance,
        "n": n,
        **effect_estimates(mean, variance, control=control, alpha=alpha),
    }


def look_statistics(
    released: Released, *, bounds: MetricBounds, covariates: bool = False, treatment: int = 1
) -> dict[str, np.ndarray]:
    """Per repetition, look and metric (shape ``(repetitions, looks, metrics)``), arm
    ``treatment``'s effect against arm 0: its ``z``, its ``variance`` and the part of it due to
    the noise (``noise``; ``stamen.server.experiment_monitoring.look_correlation``)."""
    est = estimates(released, bounds=bounds, covariates=covariates)
    scales = bounds.bounds()
    variance = est["stderr"][..., treatment, :] ** 2
    if covariates:  # at the θ the noisy sums gave (θ differs without noise)
        found = cuped_estimates(released.sums, noise_std=released.noise_std, scales=scales)
        noise = found["noise_variance"][..., [0, treatment], :].sum(axis=-2)
    else:  # the variance less its value without noise, from the same estimator
        _, clear_var, _ = arm_estimates(released.sums, noise_std=0.0, scales=scales)
        noise = variance - clear_var[..., [0, treatment], :].sum(axis=-2)
    return {
        "z": est["effect"][..., treatment, :] / est["stderr"][..., treatment, :],
        "variance": variance,
        "noise": noise,
    }
