"""Batched federated simulation of any registered model, for sweeps and large populations.

Flower's simulation engine costs seconds per round (it polls every node and runs each
device in an actor), which rules out privacy-utility grids of dozens of runs or
populations of 20,000 devices on a laptop. This module replays the same arithmetic with
the cohort vectorised:

- each device's update is the model's own batch-first device step
  (``RecModel.device_updates``), the very function the ClientApp calls for one device,
  here called for a chunk of the cohort at a time;
- user-level DP as ``MFClient`` and ``FederatedAveraging`` apply it: each device clips its whole
  update to ``clip_norm`` (``stamen.privacy.clip_update``); distributed mode adds each
  device's noise share, central mode adds noise to the mean; Opacus accounting through
  ``PrivacyAccountant``;
- SecAgg+ as Flower's ``secaggplus_mod`` and ``SecAggPlusWorkflow`` compute it: every
  device's update clipped to the clipping range and stochastically quantised with
  Flower's own ``quantize``, the integer sum dequantised into the mean;
- the server's optimiser (``ServerOptimizer``).

For MF's closed-form ``ials`` step the clipped sum can also be computed without
materialising any device's update (``_fast_round_mean``, from the factored form
``stamen.models.mf_model.MFFactors``), which is what makes 100,000-device populations fit.

It leaves out Flower's transport (messages, masks, dropouts), release signing and
checkpoints. Evaluation scores the global model for every user at once
(``RecModel.scores``): the metrics each device computes on itself, averaged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from flwr.common.secure_aggregation.quantization import dequantize, quantize

from stamen.client.app import VALID_METRICS
from stamen.models.batches import UserItems
from stamen.models.bundle import ReleaseCatalog
from stamen.models.mf_model import MFModel, mf_factors
from stamen.models.registry import DeviceInputs, RecModel, build_model, device_seeds
from stamen.privacy import PrivacyAccountant, SecAggSettings, noise_share_std
from stamen.server.cohorts import sample_cohort
from stamen.server.optimizer import ServerOptimizer
from stamen.server.settings import ServerSettings
from stamen.server.strategy import check_distributed_range, min_poisson_cohort
from stamen.simulation.baselines import shared_model_scorer
from stamen.simulation.evaluate import Scorer, evaluate
from stamen.simulation.split import Split

__all__ = [
    "BatchedResult",
    "DeviceStep",
    "cohort_updates",
    "model_step",
    "run_batched",
    "run_rounds",
    "secagg_mean",
]

#: Devices whose dense updates are materialised at once (memory: chunk × items × dim).
CHUNK = 32

#: ``step(shared, devices, rnd)``: the updates of the listed devices in round ``rnd``, one
#: ``(devices, *shape)`` tensor per shared array (before clipping and noise).
DeviceStep = Callable[[list[np.ndarray], np.ndarray, int], list[torch.Tensor]]
#: ``fast_mean(shared, users, rnd, accountant, expected_cohort)``: a round's mean update
#: computed without materialising the updates, or ``None`` to take the exact path.
FastMean = Callable[
    [list[np.ndarray], np.ndarray, int, "PrivacyAccountant | None", int], "list[np.ndarray] | None"
]


@dataclass(frozen=True)
class BatchedResult:
    """History (records shaped like ``FederatedAveraging.history``), final shared arrays,
    wall time and the privacy report (``None`` without DP)."""

    history: list[dict[str, Any]]
    shared: list[np.ndarray]
    seconds: float
    privacy: dict[str, Any] | None


def _check(model: RecModel) -> None:
    if isinstance(model, MFModel) and not model.closed_form():
        local = model.settings
        raise ValueError(
            "the batched simulation replays MF's closed-form ials step with one local epoch "
            f"(got loss={local.loss!r}, local_epochs={local.local_epochs}); "
            "use the Flower runner for other settings"
        )


def cohort_updates(
    model: RecModel,
    shared: list[np.ndarray],
    data: UserItems,
    users: np.ndarray,
    *,
    seed: int,
    rnd: int,
    attributes: np.ndarray | None = None,
) -> list[torch.Tensor]:
    """Every device's update (``model.device_updates``) for the cohort rows ``data`` of
    device ids ``users`` in round ``rnd``: one ``(devices, *shape)`` tensor per shared
    array. Each device's seed depends on its id and the round only; ``attributes`` are the
    devices' own (rows by device id)."""
    inputs = DeviceInputs(
        history=data,
        seeds=device_seeds(users, seed=seed, rnd=rnd, purpose=0),
        attributes=None if attributes is None else attributes[users],
    )
    return [torch.from_numpy(d) for d in model.device_updates(shared, inputs).deltas]


def model_step(
    model: RecModel,
    data: UserItems,
    users: np.ndarray,
    *,
    seed: int,
    attributes: np.ndarray | None = None,
) -> DeviceStep:
    """The :data:`DeviceStep` of a registered model for devices ``users``, whose
    histories are the rows of ``data`` in that order (``attributes``: rows by device id)."""
    position = np.full(int(np.max(users, initial=-1)) + 1, -1, np.int64)
    position[np.asarray(users, np.int64)] = np.arange(len(users))

    def step(shared: list[np.ndarray], devices: np.ndarray, rnd: int) -> list[torch.Tensor]:
        rows = position[np.asarray(devices, np.int64)]
        return cohort_updates(
            model, shared, data.select(rows), devices, seed=seed, rnd=rnd, attributes=attributes
        )

    return step


def _clip_rows(parts: list[torch.Tensor], max_norm: float) -> None:
    """Clip each device's whole update (row ``d`` of every part) to L2 norm ``max_norm`` in
    place (as ``clip_update`` does on the device: scale by ``min(1, max_norm / norm)``)."""
    norms = torch.sqrt(
        sum(
            torch.linalg.vector_norm(p.reshape(len(p), -1), dim=1, dtype=torch.float64) ** 2
            for p in parts
        )
    )
    scale = torch.clamp(max_norm / norms.clamp_min(1e-30), max=1.0).float()
    for p in parts:
        p *= scale.reshape((-1,) + (1,) * (p.dim() - 1))


def secagg_mean(quantised_sum: list[np.ndarray], devices: int, secagg: SecAggSettings) -> list:
    """The mean Flower's ``SecAggPlusWorkflow`` reconstructs from the sum of ``devices``
    quantised updates (every weight 1, ``max_weight=1``): dequantise the sum, shift it by
    ``-(devices - 1) * clipping_range`` and divide by ``devices``."""
    cr, qr = secagg.clipping_range, secagg.quantization_range
    return [
        ((a - (devices - 1) * cr) / devices).astype(np.float32)
        for a in dequantize(quantised_sum, cr, qr)
    ]


def _evaluate(
    model: RecModel,
    shared: list[np.ndarray],
    split: Split,
    settings: ServerSettings,
    attributes: np.ndarray | None,
) -> dict:
    def scorer(stage: Literal["valid", "test"]) -> Scorer:
        return shared_model_scorer(
            shared, split, model=model, seed=settings.seed, attributes=attributes, stage=stage
        )

    test = evaluate(scorer("test"), split, stage="test")
    valid = evaluate(scorer("valid"), split, stage="valid", ks=(10,))
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
    model: RecModel | None = None,
    attributes: np.ndarray | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    exact: bool = False,
) -> BatchedResult:
    """Run ``settings.rounds`` rounds of ``settings.clients_per_round`` devices drawn from
    the ``split.n_users`` users (see module docstring), training ``model`` (``None``: MF
    with ``settings.local``; other models need their catalogue); ``attributes`` are the
    users' on-device attributes (rows by user) for models that read them.

    ``exact=True`` materialises every device's update and runs Flower's quantisation on
    it; the default computes the same clipped sum in factored form (``_fast_round_mean``),
    several times faster on large catalogues, and falls back to the exact path in any
    round where a coordinate could reach SecAgg+'s clipping range."""
    if model is None:
        if settings.model != "mf":
            raise ValueError(f"model {settings.model!r} needs its catalogue: pass model=")
        catalog = ReleaseCatalog.build(
            [str(i) for i in range(split.n_items)], titles=[""] * split.n_items
        )
        model = build_model("mf", settings.local, catalog)
    _check(model)
    recmodel = model
    users = np.arange(split.n_users)
    step = model_step(model, split.train, users, seed=settings.seed, attributes=attributes)
    fast = None
    if not exact and isinstance(model, MFModel):
        mf = model

        def fast(shared, users, rnd, accountant, expected):  # type: ignore[no-untyped-def]
            data = split.train.select(users)
            return _fast_round_mean(mf, shared, data, settings, rnd, accountant, expected)

    return run_rounds(
        split.n_users,
        settings,
        initial=initial,
        step=step,
        fast_mean=fast,
        evaluate=lambda shared: _evaluate(recmodel, shared, split, settings, attributes),
        on_round=on_round,
    )


def run_rounds(
    population: int,
    settings: ServerSettings,
    *,
    initial: list[np.ndarray],
    step: DeviceStep,
    fast_mean: FastMean | None = None,
    evaluate: Callable[[list[np.ndarray]], dict] | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> BatchedResult:
    """``settings.rounds`` rounds of federated averaging over devices ``0..population-1``
    whose updates ``step`` computes (any shared arrays: the retrieval model's, the
    ranker's): seeded cohorts (Poisson under DP), each update clipped, noised and
    quantised as the devices and SecAgg+ do, the accountant charged, the server's
    optimiser stepped. ``fast_mean`` may compute a round's mean another way (``None``:
    the exact path); ``evaluate(shared)`` runs every ``settings.eval_every`` rounds and
    after the last."""
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
            accountant.step()  # charged although skipped, as FederatedAveraging does
            record["skipped"] = f"Poisson cohort of {len(users)} devices, below {floor}"
            record["privacy"] = {"epsilon": accountant.epsilon, "delta": accountant.settings.delta}
            history.append(record)
            continue
        mean = None
        if fast_mean is not None:
            mean = fast_mean(server.arrays(), users, rnd, accountant, cohort)
        if mean is None:
            mean = _round_mean(step, server.arrays(), users, settings, rnd, accountant, cohort)
        server.step(mean)
        record.update({"devices": len(users), "cohort": len(users), "failures": 0})
        if accountant is not None:
            record["privacy"] = {"epsilon": accountant.epsilon, "delta": accountant.settings.delta}
        every = settings.eval_every
        if evaluate is not None and (rnd == settings.rounds or (every > 0 and rnd % every == 0)):
            record["evaluate"] = evaluate(server.arrays())
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
    model: MFModel,
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
    f = mf_factors(shared, data, model.settings)
    local, dp = model.settings, accountant.settings if accountant is not None else None
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
    # under DP the fixed-denominator estimator (FederatedAveraging._privatise): the expected cohort
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
    step: DeviceStep,
    shared: list[np.ndarray],
    users: np.ndarray,
    settings: ServerSettings,
    rnd: int,
    accountant: PrivacyAccountant | None,
    expected: int,
) -> list[np.ndarray]:
    """The mean update the server's optimiser receives for the cohort ``users``."""
    devices = len(users)
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
        rows = np.arange(start, min(start + CHUNK, devices))
        deltas = step(shared, users[rows], rnd)
        if dp is not None:
            _clip_rows(deltas, dp.clip_norm)
            if share > 0:
                for d in deltas:
                    d += share * torch.randn(d.shape, generator=noise_gen)
        parts = [d.numpy() for d in deltas]
        if secagg.enabled:
            parts = [
                q.astype(np.int64).sum(0)
                for q in quantize(parts, secagg.clipping_range, secagg.quantization_range)
            ]
        else:
            parts = [p.sum(0, dtype=np.float64) for p in parts]
        sums = parts if sums is None else [s + p for s, p in zip(sums, parts, strict=True)]
    assert sums is not None
    if secagg.enabled:
        mean = secagg_mean(sums, devices, secagg)
    else:
        mean = [(s / devices).astype(np.float32) for s in sums]
    # under DP the fixed-denominator estimator (FederatedAveraging._privatise): the expected cohort
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
