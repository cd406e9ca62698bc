"""Batched federated simulation of Stamen's iALS MF path, for sweeps and large populations.

Flower's simulation engine costs seconds per round (it polls every node and runs each
device in an actor), which rules out privacy-utility grids of dozens of runs or
populations of 20,000 devices on a laptop. This module replays the same arithmetic with
the cohort vectorised:

- each device's update is what ``stamen.client.local.local_update`` returns for the
  ``ials`` loss: the user factor solved exactly against the current item side, then one
  local SGD step, as a dense delta of the item factors and biases (``device_deltas``;
  ``tests/test_batched.py`` checks it against ``local_update`` device by device);
- user-level DP as ``MFClient`` and ``FederatedMF`` apply it: each device clips its whole
  update to ``clip_norm`` (``stamen.privacy.clip_update``); distributed mode adds each
  device's noise share, central mode adds noise to the mean; Opacus accounting through
  ``PrivacyAccountant``;
- SecAgg+ as Flower's ``secaggplus_mod`` and ``SecAggPlusWorkflow`` compute it: every
  device's update clipped to the clipping range and stochastically quantised with
  Flower's own ``quantize``, the integer sum dequantised into the mean;
- the server's optimiser (``ServerOptimizer``).

It leaves out Flower's transport (messages, masks, dropouts), release signing and
checkpoints. Evaluation scores the global model for every user at once with the exact
user solve: the metrics each device computes on itself in ``MFClient.evaluate``, averaged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.common.secure_aggregation.quantization import dequantize, quantize

from stamen.client.app import VALID_METRICS
from stamen.models.batches import UserItems
from stamen.models.mf import MatrixFactorization
from stamen.models.training import solve_users
from stamen.privacy import PrivacyAccountant, SecAggSettings, noise_share_std
from stamen.server.cohorts import sample_cohort
from stamen.server.optimizer import ServerOptimizer
from stamen.server.settings import ServerSettings
from stamen.server.strategy import check_distributed_range, min_poisson_cohort
from stamen.simulation.baselines import shared_model_scorer
from stamen.simulation.evaluate import evaluate
from stamen.simulation.split import Split

__all__ = ["BatchedResult", "device_deltas", "run_batched", "secagg_mean"]

#: Devices whose dense updates are materialised at once (memory: chunk × items × dim).
CHUNK = 32


@dataclass(frozen=True)
class BatchedResult:
    """History (records shaped like ``FederatedMF.history``), final shared arrays,
    wall time and the privacy report (``None`` without DP)."""

    history: list[dict[str, Any]]
    shared: list[np.ndarray]
    seconds: float
    privacy: dict[str, Any] | None


def _check(settings: ServerSettings) -> None:
    local = settings.local
    if local.loss != "ials" or local.local_epochs != 1:
        raise ValueError(
            "the batched simulation replays the ials loss with one local epoch "
            f"(got loss={local.loss!r}, local_epochs={local.local_epochs}); "
            "use the Flower runner for other settings"
        )


def device_deltas(
    shared: list[np.ndarray], data: UserItems, settings: ServerSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every device's ``local_update`` delta for the ``data.n_users`` devices of a cohort:
    item-factor deltas ``(devices, items, dim)`` and bias deltas ``(devices, items)``.

    For one device with user factor ``x`` (the exact solve), scores ``s = W x + b``,
    targets ``t`` and confidences ``c = 1 + alpha t``, one SGD step of learning rate
    ``lr`` and weight decay ``wd`` on ``Σ c (t - s)² + l2 |x|² + item_l2 |W|²`` moves
    ``W`` by ``lr (2 r xᵀ - (2 item_l2 + wd) W)`` and ``b`` by ``lr (2 r - wd b)``, with
    ``r = c ∘ (t - s)``; ``update_weighting="positives"`` scales both by the count.
    """
    parts = _factors(shared, data, settings)
    lr, decay, wd = settings.local.local_lr, parts.decay, settings.local.weight_decay
    d_w = lr * (2 * parts.residual[:, :, None] * parts.x[:, None, :] - decay * parts.w[None])
    d_b = lr * (2 * parts.residual - wd * parts.b[None])
    d_w *= parts.weight[:, None, None]
    d_b *= parts.weight[:, None]
    return d_w, d_b


@dataclass(frozen=True)
class _Factors:
    """A cohort's deltas in factored form: device ``u``'s update of ``W`` is
    ``lr * weight[u] * (2 residual[u] ⊗ x[u] - decay * W)``."""

    w: torch.Tensor
    b: torch.Tensor
    x: torch.Tensor
    residual: torch.Tensor
    weight: torch.Tensor
    decay: float


def _factors(shared: list[np.ndarray], data: UserItems, settings: ServerSettings) -> _Factors:
    local = settings.local
    model = MatrixFactorization(data.n_users, shared[0].shape[0], local.dim)
    model.load_shared_arrays(shared)
    solve_users(model, data, alpha=local.alpha, l2=local.l2)
    with torch.no_grad():
        w, b = model.items.weight.detach(), model.items.bias.detach()
        x = model.users.weight.detach()
        target = torch.zeros(data.n_users, w.shape[0])
        rows, items = data.pairs()
        target[torch.from_numpy(rows), torch.from_numpy(items)] = 1.0
        residual = (1.0 + local.alpha * target) * (target - (x @ w.T + b))
    weight = torch.ones(data.n_users)
    if local.update_weighting == "positives":
        weight = torch.from_numpy(data.counts().astype(np.float32))
    decay = 2 * (local.item_l2 or 0.0) + local.weight_decay
    return _Factors(w=w, b=b, x=x, residual=residual, weight=weight, decay=decay)


def _clip_rows(d_w: torch.Tensor, d_b: torch.Tensor, max_norm: float) -> None:
    """Clip each device's whole update to L2 norm ``max_norm`` in place (as
    ``clip_update`` does on the device: scale by ``min(1, max_norm / norm)``)."""
    norms = torch.sqrt(d_w.double().pow(2).sum((1, 2)) + d_b.double().pow(2).sum(1))
    scale = torch.clamp(max_norm / norms.clamp_min(1e-30), max=1.0).float()
    d_w *= scale[:, None, None]
    d_b *= scale[:, None]


def secagg_mean(quantised_sum: list[np.ndarray], devices: int, secagg: SecAggSettings) -> list:
    """The mean Flower's ``SecAggPlusWorkflow`` reconstructs from the sum of ``devices``
    quantised updates (every weight 1, ``max_weight=1``): dequantise the sum, shift it by
    ``-(devices - 1) * clipping_range`` and divide by ``devices``."""
    cr, qr = secagg.clipping_range, secagg.quantization_range
    return [
        ((a - (devices - 1) * cr) / devices).astype(np.float32)
        for a in dequantize(quantised_sum, cr, qr)
    ]


def _evaluate(shared: list[np.ndarray], split: Split, settings: ServerSettings) -> dict:
    scorer = shared_model_scorer(shared, split, local=settings.local, seed=settings.seed)
    test = evaluate(scorer, split, stage="test")
    valid = evaluate(scorer, split, stage="valid", ks=(10,))
    return {
        **test,
        **{f"valid_{k}": v for k, v in valid.items() if k in VALID_METRICS},
        "devices": len(split.evaluated),
    }


def run_batched(
    split: Split,
    settings: ServerSettings,
    *,
    initial: list[np.ndarray],
    on_round: Callable[[dict[str, Any]], None] | None = None,
    exact: bool = False,
) -> BatchedResult:
    """Run ``settings.rounds`` rounds of ``settings.clients_per_round`` devices drawn from
    the ``split.n_users`` users (see module docstring).

    ``exact=True`` materialises every device's update and runs Flower's quantisation on
    it; the default computes the same clipped sum in factored form (``_fast_round_mean``),
    several times faster on large catalogues, and falls back to the exact path in any
    round where a coordinate could reach SecAgg+'s clipping range."""
    _check(settings)
    population = split.n_users
    cohort = min(settings.clients_per_round, population)
    server = ServerOptimizer(initial, settings.optimizer)
    accountant = None
    if settings.dp.enabled:
        dp = settings.dp.resolve(population=population, cohort=cohort, rounds=settings.rounds)
        accountant = PrivacyAccountant(dp)
        check_distributed_range(settings, dp.noise_multiplier)
        floor = min_poisson_cohort(settings, dp.noise_multiplier)
    history: list[dict[str, Any]] = []
    started = time.perf_counter()
    for rnd in range(1, settings.rounds + 1):
        tick = time.perf_counter()
        record: dict[str, Any] = {"round": rnd}
        if accountant is not None and accountant.settings.target_epsilon is not None:
            if accountant.would_exceed(rounds=1):
                record["skipped"] = "privacy budget (target epsilon) reached"
                history.append(record)
                continue
        draw = {"rate": cohort / population} if accountant is not None else {"size": cohort}
        users = sample_cohort(population, seed=settings.seed, rnd=rnd, purpose=0, **draw)
        if accountant is not None and len(users) < floor:
            accountant.step()  # charged although skipped, as FederatedMF does
            record["skipped"] = f"Poisson cohort of {len(users)} devices, below {floor}"
            record["privacy"] = {"epsilon": accountant.epsilon, "delta": accountant.settings.delta}
            history.append(record)
            continue
        data = split.train.select(users)
        mean = None
        if not exact:
            mean = _fast_round_mean(server.arrays(), data, settings, rnd, accountant, cohort)
        if mean is None:
            mean = _round_mean(server.arrays(), data, settings, rnd, accountant, cohort)
        server.step(mean)
        record.update({"devices": len(users), "cohort": len(users), "failures": 0})
        if accountant is not None:
            record["privacy"] = {"epsilon": accountant.epsilon, "delta": accountant.settings.delta}
        every = settings.eval_every
        if rnd == settings.rounds or (every > 0 and rnd % every == 0):
            record["evaluate"] = _evaluate(server.arrays(), split, settings)
        record["seconds"] = time.perf_counter() - tick
        history.append(record)
        if on_round is not None:
            on_round(record)
    privacy = None
    if accountant is not None:
        privacy = {**accountant.report(), "mode": settings.dp.mode}
    return BatchedResult(
        history=history,
        shared=server.arrays(),
        seconds=time.perf_counter() - started,
        privacy=privacy,
    )


def _fast_round_mean(
    shared: list[np.ndarray],
    data: UserItems,
    settings: ServerSettings,
    rnd: int,
    accountant: PrivacyAccountant | None,
    expected: int,
) -> list[np.ndarray] | None:
    """``_round_mean`` without materialising any device's update: per-device norms and the
    clipped sum from the factored form, in float64. Equal to ``_round_mean`` up to SecAgg+'s
    quantisation (below one level per coordinate) and the noise draw; distributed noise
    shares are drawn as their sum, which has the same distribution. ``None`` when some
    coordinate could reach SecAgg+'s clipping range (then only the exact path is exact)."""
    f = _factors(shared, data, settings)
    local, dp = settings.local, accountant.settings if accountant is not None else None
    lr, wd, k = local.local_lr, local.weight_decay, f.decay
    r, x = f.residual.double(), f.x.double()
    w, b = f.w.double(), f.b.double()
    r_sq = r.pow(2).sum(1)
    norm_sq = (
        4 * r_sq * x.pow(2).sum(1)
        - 4 * k * ((r @ w) * x).sum(1)
        + k**2 * w.pow(2).sum()
        + 4 * r_sq
        - 4 * wd * (r @ b)
        + wd**2 * b.pow(2).sum()
    ).clamp_min(0.0)
    gain = lr * f.weight.double()
    if dp is not None:
        norms = gain * norm_sq.sqrt()
        gain = gain * torch.clamp(dp.clip_norm / norms.clamp_min(1e-30), max=1.0)
    devices = data.n_users
    share = 0.0
    if dp is not None and settings.dp.mode == "distributed":
        share = noise_share_std(
            noise_multiplier=dp.noise_multiplier, clip_norm=dp.clip_norm, cohort=devices
        )
    if settings.secagg.enabled:
        r_max = r.abs().amax(1)
        bound = gain * torch.maximum(
            2 * r_max * x.abs().amax(1) + k * w.abs().max(), 2 * r_max + wd * b.abs().max()
        )
        if float((bound + 7 * share).max()) >= settings.secagg.clipping_range:
            return None
    total = gain.sum()
    sums = [2 * (gain[:, None] * r).T @ x - k * total * w, 2 * gain @ r - wd * total * b]
    # under DP the fixed-denominator estimator (FederatedMF._privatise): the expected cohort
    denominator = expected if dp is not None else devices
    mean = [(a / denominator).float().numpy() for a in sums]
    if dp is not None:
        # central: the server's draw; distributed: the devices' shares, drawn as their sum
        # (same distribution, its own stream)
        purpose = 7 if settings.dp.mode == "central" else 2
        rng = np.random.default_rng([settings.seed, rnd, purpose])
        std = dp.noise_multiplier * dp.clip_norm / denominator
        mean = [a + rng.normal(0.0, std, a.shape).astype(np.float32) for a in mean]
        assert accountant is not None
        accountant.step()
    return mean


def _round_mean(
    shared: list[np.ndarray],
    data: UserItems,
    settings: ServerSettings,
    rnd: int,
    accountant: PrivacyAccountant | None,
    expected: int,
) -> list[np.ndarray]:
    """The mean update the server's optimiser receives for one cohort."""
    devices = data.n_users
    secagg = settings.secagg
    dp = accountant.settings if accountant is not None else None
    share = 0.0
    if dp is not None and settings.dp.mode == "distributed":
        share = noise_share_std(
            noise_multiplier=dp.noise_multiplier, clip_norm=dp.clip_norm, cohort=devices
        )
    noise_gen = torch.Generator().manual_seed(
        int(np.random.default_rng([settings.seed, rnd, 2]).integers(2**62))
    )
    sums: list[np.ndarray] | None = None
    for start in range(0, devices, CHUNK):
        chunk = data.select(np.arange(start, min(start + CHUNK, devices)))
        d_w, d_b = device_deltas(shared, chunk, settings)
        if dp is not None:
            _clip_rows(d_w, d_b, dp.clip_norm)
            if share > 0:
                d_w += share * torch.randn(d_w.shape, generator=noise_gen)
                d_b += share * torch.randn(d_b.shape, generator=noise_gen)
        parts = [d_w.numpy(), d_b.numpy()]
        if secagg.enabled:
            parts = [
                q.astype(np.int64).sum(0)
                for q in quantize(parts, secagg.clipping_range, secagg.quantization_range)
            ]
        else:
            parts = [p.astype(np.float64).sum(0) for p in parts]
        sums = parts if sums is None else [s + p for s, p in zip(sums, parts, strict=True)]
    assert sums is not None
    if secagg.enabled:
        mean = secagg_mean(sums, devices, secagg)
    else:
        mean = [(s / devices).astype(np.float32) for s in sums]
    # under DP the fixed-denominator estimator (FederatedMF._privatise): the expected cohort
    denominator = expected if dp is not None else devices
    mean = [a * np.float32(devices / denominator) for a in mean]
    if dp is not None:
        if settings.dp.mode == "central":
            rng = np.random.default_rng([settings.seed, rnd, 7])
            std = dp.noise_multiplier * dp.clip_norm / denominator
            mean = [a + rng.normal(0.0, std, a.shape).astype(np.float32) for a in mean]
        assert accountant is not None
        accountant.step()
    return mean
