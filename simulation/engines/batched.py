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
materialising any device's update (``fast_round_mean``, from the factored form
``stamen.models.mf.model.MFFactors``), which is what makes 100,000-device populations fit.

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

from stamen.models.batches import UserItems
from stamen.models.bundle import ReleaseCatalog
from stamen.models.mf.model import MFModel, mf_factors
from stamen.models.registry import DeviceInputs, RecModel, build_model, device_seeds
from stamen.privacy import SecAggSettings
from stamen.server.optimizer import ServerOptimizer
from stamen.server.rounds import BUDGET_SPENT, Evaluation, PrivacySpent, RoundPlan, RoundRecord
from stamen.server.settings import ServerSettings
from stamen.simulation.baselines.scorers import shared_model_scorer
from stamen.simulation.protocol.device_evaluation import VALID_METRICS
from stamen.simulation.protocol.evaluate import Scorer, evaluate
from stamen.simulation.protocol.split import Split

__all__ = [
    "BatchedResult",
    "DeviceStep",
    "FastMean",
    "cohort_updates",
    "fast_round_mean",
    "model_step",
    "round_mean",
    "run_batched",
    "run_rounds",
    "secagg_mean",
]

#: Devices whose dense updates are materialised at once (memory: chunk × items × dim).
CHUNK = 32

#: ``step(shared, devices, rnd)``: the updates of the listed devices in round ``rnd``, one
#: ``(devices, *shape)`` tensor per shared array (before clipping and noise).
DeviceStep = Callable[[list[np.ndarray], np.ndarray, int], list[torch.Tensor]]
#: ``fast_mean(shared, users, rnd, plan)``: a round's mean update computed without
#: materialising the updates, or ``None`` to take the exact path.
FastMean = Callable[[list[np.ndarray], np.ndarray, int, RoundPlan], "list[np.ndarray] | None"]


@dataclass(frozen=True)
class BatchedResult:
    """History (records shaped like ``FederatedAveraging.history``), final shared arrays,
    wall time and the privacy report (``None`` without DP)."""

    history: list[RoundRecord]
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
    states: dict[int, np.ndarray | None] | None = None,
) -> list[torch.Tensor]:
    """Every device's update (``model.device_updates``) for the cohort rows ``data`` of
    device ids ``users`` in round ``rnd``: one ``(devices, *shape)`` tensor per shared
    array. Each device's seed depends on its id and the round only; ``attributes`` are the
    devices' own (rows by device id). ``states`` holds each device's private state by
    device id, as its node would (read before the step, replaced after it; ``None``: the
    devices step fresh and nothing is kept)."""
    inputs = DeviceInputs(
        history=data,
        seeds=device_seeds(users, seed=seed, rnd=rnd, purpose=0),
        attributes=None if attributes is None else attributes[users],
        states=None if states is None else tuple(states.get(int(u)) for u in users),
        round=rnd,
    )
    updates = model.device_updates(shared, inputs)
    if states is not None:
        states.update(zip(map(int, users), updates.states, strict=True))
    return [torch.from_numpy(d) for d in updates.deltas]


def model_step(
    model: RecModel,
    data: UserItems,
    users: np.ndarray,
    *,
    seed: int,
    attributes: np.ndarray | None = None,
    states: dict[int, np.ndarray | None] | None = None,
) -> DeviceStep:
    """The :data:`DeviceStep` of a registered model for devices ``users``, whose
    histories are the rows of ``data`` in that order (``attributes``: rows by device id;
    ``states``: the devices' private states, as ``cohort_updates`` keeps them)."""
    position = np.full(int(np.max(users, initial=-1)) + 1, -1, np.int64)
    position[np.asarray(users, np.int64)] = np.arange(len(users))

    def step(shared: list[np.ndarray], devices: np.ndarray, rnd: int) -> list[torch.Tensor]:
        rows = position[np.asarray(devices, np.int64)]
        return cohort_updates(
            model,
            shared,
            data.select(rows),
            devices,
            seed=seed,
            rnd=rnd,
            attributes=attributes,
            states=states,
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
    cr, qr = secagg.value_range(), secagg.quantization_range
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
) -> Evaluation:
    def scorer(stage: Literal["valid", "test"]) -> Scorer:
        return shared_model_scorer(
            shared, split, model=model, seed=settings.seed, attributes=attributes, stage=stage
        )

    test = evaluate(scorer("test"), split, stage="test")
    valid = evaluate(scorer("valid"), split, stage="valid", ks=(10,))
    return Evaluation(
        metrics={**test, **{f"valid_{k}": v for k, v in valid.items() if k in VALID_METRICS}},
        devices=len(split.evaluated),
    )


def run_batched(
    split: Split,
    settings: ServerSettings,
    *,
    initial: list[np.ndarray],
    model: RecModel | None = None,
    attributes: np.ndarray | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
    exact: bool = False,
    evaluation: Callable[[list[np.ndarray]], Evaluation] | None = None,
    states: dict[int, np.ndarray | None] | None = None,
) -> BatchedResult:
    """Run ``settings.rounds`` rounds of ``settings.clients_per_round`` devices drawn from
    the ``split.n_users`` users (see module docstring), training ``model`` (``None``: MF
    with ``settings.local``; other models need their catalogue); ``attributes`` are the
    users' on-device attributes (rows by user) for models that read them. ``evaluation``
    measures the shared arrays on evaluation rounds (``None``: offline scoring of every
    evaluated user, ``shared_model_scorer``). ``states`` receives each device's private
    state by device id as its training leaves it (PFedRec's score function; ``None``: a
    store of the run's own), for an ``evaluation`` that scores with them.

    ``exact=True`` materialises every device's update and runs Flower's quantisation on
    it; the default computes the same clipped sum in factored form (``fast_round_mean``),
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
    states = {} if states is None else states
    step = model_step(
        model, split.train, users, seed=settings.seed, attributes=attributes, states=states
    )
    fast = None
    if not exact and isinstance(model, MFModel):
        mf = model

        def fast(
            shared: list[np.ndarray], users: np.ndarray, rnd: int, plan: RoundPlan
        ) -> list[np.ndarray] | None:
            return fast_round_mean(mf, shared, split.train.select(users), plan, rnd)

    return run_rounds(
        split.n_users,
        settings,
        initial=initial,
        step=step,
        fast_mean=fast,
        evaluate=evaluation
        or (lambda shared: _evaluate(recmodel, shared, split, settings, attributes)),
        on_round=on_round,
    )


def run_rounds(
    population: int,
    settings: ServerSettings,
    *,
    initial: list[np.ndarray],
    step: DeviceStep,
    fast_mean: FastMean | None = None,
    evaluate: Callable[[list[np.ndarray]], Evaluation] | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
) -> BatchedResult:
    """``settings.rounds`` rounds of federated averaging over devices ``0..population-1``
    whose updates ``step`` computes (any shared arrays: the retrieval model's, the
    ranker's): seeded cohorts (Poisson under DP), each update clipped, noised and
    quantised as the devices and SecAgg+ do, the accountant charged, the server's
    optimiser stepped. ``fast_mean`` may compute a round's mean another way (``None``:
    the exact path); ``evaluate(shared)`` runs every ``settings.eval_every`` rounds and
    after the last, skipped rounds included; ``on_round`` gets every round's record,
    skipped ones included."""
    plan = RoundPlan(settings, population=population)
    server = ServerOptimizer(initial, settings.optimizer)
    history: list[RoundRecord] = []
    started = time.perf_counter()
    for rnd in range(1, settings.rounds + 1):
        tick = time.perf_counter()
        record = RoundRecord(round=rnd)
        draw = None if plan.budget_spent() else plan.draw(rnd)
        if draw is None:
            record.skipped = BUDGET_SPENT
        elif draw.skipped is not None:
            assert plan.mechanism is not None
            record.skipped = draw.skipped
            record.privacy = PrivacySpent.of(plan.mechanism)
        else:
            users = draw.cohort
            mean = None
            if fast_mean is not None:
                mean = fast_mean(server.arrays(), users, rnd, plan)
            if mean is None:
                mean = round_mean(step, server.arrays(), users, plan, rnd)
            server.step(mean)
            record.devices = len(users)
            record.cohort = len(users)
            record.failures = 0
            if plan.mechanism is not None:
                record.privacy = PrivacySpent.of(plan.mechanism)
        # as the Flower strategies do, a skipped round still evaluates on its schedule
        if evaluate is not None and plan.evaluates(rnd):
            record.evaluate = evaluate(server.arrays())
        record.seconds = time.perf_counter() - tick
        history.append(record)
        if on_round is not None:
            on_round(record)
    privacy = None if plan.mechanism is None else plan.mechanism.report()
    return BatchedResult(
        history=history,
        shared=server.arrays(),
        seconds=time.perf_counter() - started,
        privacy=privacy,
    )


def fast_round_mean(
    model: MFModel,
    shared: list[np.ndarray],
    data: UserItems,
    plan: RoundPlan,
    rnd: int,
) -> list[np.ndarray] | None:
    """:func:`round_mean` of MF's closed-form step without materialising any device's
    update: per-device norms and the
    clipped sum from the factored form, in float64. Equal to ``round_mean`` up to SecAgg+'s
    quantisation (below one level per coordinate) and the noise draw; distributed noise
    shares are drawn as their sum, which has the same distribution. ``None`` when some
    coordinate could reach SecAgg+'s clipping range (then only the exact path is exact)."""
    f = mf_factors(shared, data, model.settings)
    local, mechanism, settings = model.settings, plan.mechanism, plan.settings
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
    if mechanism is not None:
        norms = gain * norm_sq.sqrt()
        gain = gain * torch.clamp(mechanism.sensitivity / norms.clamp_min(1e-30), max=1.0)
    devices = data.n_users
    share = plan.noise_share_std(devices)
    if settings.secagg.enabled:
        r_max = r.abs().amax(1)
        bound = gain * torch.maximum(
            2 * r_max * x.abs().amax(1) + k * w.abs().max(), 2 * r_max + wd * b.abs().max()
        )
        if mechanism is not None:  # no value of an update clipped to C is above C
            bound = torch.clamp(bound, max=mechanism.sensitivity)
        if float((bound + 7 * share).max()) > plan.secagg.value_range():
            return None
    total = gain.sum()
    sums = [2 * (gain[:, None] * r).T @ x - k * total * w, 2 * gain @ r - wd * total * b]
    # under DP the fixed-denominator estimator (RoundPlan.release): the expected cohort
    denominator = plan.expected_cohort if mechanism is not None else devices
    mean = [(a / denominator).float().numpy() for a in sums]
    # the sum is divided already; the devices' noise shares are drawn here, as their sum
    return plan.release(mean, rnd=rnd, devices=denominator, simulated_shares=True)


def round_mean(
    step: DeviceStep,
    shared: list[np.ndarray],
    users: np.ndarray,
    plan: RoundPlan,
    rnd: int,
) -> list[np.ndarray]:
    """The mean update the server's optimiser receives for the cohort ``users`` in round
    ``rnd``: each device's update clipped and given its noise share as the device does,
    quantised and summed as SecAgg+ does, released by the plan."""
    devices = len(users)
    secagg = plan.secagg  # its clipping range resolved from the clip norm
    mechanism = plan.mechanism
    share = plan.noise_share_std(devices)
    noise_gen = torch.Generator().manual_seed(int(plan.streams.noise_shares(rnd).integers(2**62)))
    sums: list[np.ndarray] | None = None
    for start in range(0, devices, CHUNK):
        rows = np.arange(start, min(start + CHUNK, devices))
        deltas = step(shared, users[rows], rnd)
        if mechanism is not None:
            _clip_rows(deltas, mechanism.sensitivity)
            if share > 0:
                for d in deltas:
                    d += share * torch.randn(d.shape, generator=noise_gen)
        parts = [d.numpy() for d in deltas]
        if secagg.enabled:
            parts = [
                q.astype(np.int64).sum(0)
                for q in quantize(parts, secagg.value_range(), secagg.quantization_range)
            ]
        else:
            parts = [p.sum(0, dtype=np.float64) for p in parts]
        sums = parts if sums is None else [s + p for s, p in zip(sums, parts, strict=True)]
    assert sums is not None
    if secagg.enabled:
        mean = secagg_mean(sums, devices, secagg)
    else:
        mean = [(s / devices).astype(np.float32) for s in sums]
    return plan.release(mean, rnd=rnd, devices=devices)
