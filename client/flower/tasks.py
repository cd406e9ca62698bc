"""What a device does for each task of the wire protocol (``stamen.models.wire.Task``).

A handler takes the device (:class:`~stamen.client.flower.app.DeviceClient`: its items,
catalogue, node state and randomness), the arrays the server sent and the decoded
:class:`~stamen.models.wire.Request`. Training handlers return what the device uploads,
evaluation handlers the metrics it reports. Every upload is clipped and given the device's
noise share (user-level DP, :func:`privatise`) and checked (:func:`check_upload`) before
SecAgg+ masks it.

The registries :data:`FIT_TASKS` and :data:`EVALUATE_TASKS` hold what every device can do;
a runtime adds what only it can (the simulation registers the held-out evaluation of the
model, ``stamen.simulation.protocol.device_evaluation``: a device library knows nothing
of test items).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from stamen.client.flower.analytics import evaluation_vectors, trending_vectors
from stamen.client.flower.statistics import als_upload
from stamen.models.analytics import metric_names_from_config
from stamen.models.experiments import MetricBounds, metric_set, statistics
from stamen.models.mf.settings import LocalSettings
from stamen.models.off_policy import width as off_policy_width
from stamen.models.ranker.model import (
    RANKER_METRICS,
    RankingExamples,
    list_metrics,
    ranker_updates,
)
from stamen.models.ranker.settings import RankerSettings
from stamen.models.ranker.weights import FEATURES, check_ranker
from stamen.models.wire import Request, Scalar, Task
from stamen.privacy import RecordDP, check_update, clip_update, gaussian_noise

if TYPE_CHECKING:
    from stamen.client.flower.app import DeviceClient

__all__ = [
    "EVALUATE_TASKS",
    "EvaluateHandler",
    "FIT_TASKS",
    "FitHandler",
    "als",
    "check_upload",
    "evaluation_sum",
    "experiment",
    "off_policy",
    "privatise",
    "ranker_metrics",
    "ranker_step",
    "train",
    "trending",
]

FitResult = tuple[list[np.ndarray], int, dict[str, Scalar]]
EvaluateResult = tuple[float, int, dict[str, Scalar]]
#: ``handler(device, arrays, request)`` of a training message: (upload, weight, metrics).
FitHandler = Callable[["DeviceClient", list[np.ndarray], Request], FitResult]
#: ``handler(device, arrays, request)`` of an evaluation message: (loss, examples, metrics).
EvaluateHandler = Callable[["DeviceClient", list[np.ndarray], Request], EvaluateResult]

#: Streams of the device's own noise, by what it noises (an experiment's: its place in the
#: release added).
_TRAINING_NOISE, _ANALYTICS_NOISE, _OFF_POLICY_NOISE, _EXPERIMENT_NOISE = 2, 3, 15, 16


def privatise(
    device: DeviceClient, upload: list[np.ndarray], request: Request, *, purpose: int
) -> list[np.ndarray]:
    """User-level DP on the device: clip the whole upload to the request's clip norm,
    check it (``UpdateBoundError`` above it) and, in distributed mode, add this device's
    share of the noise (drawn from a stream of its own per ``purpose``: training 2,
    analytics 3)."""
    if request.dp is None:
        return upload
    clipped, _ = clip_update(upload, max_norm=request.dp.clip_norm)
    # the device's own check before its noise and SecAgg+'s masks (UpdateBoundError)
    check_update(clipped, expected_shapes=[np.shape(a) for a in upload], bound=_bound(request))
    if request.dp.noise_std > 0:
        rng = device.rng(request, purpose)
        noise = gaussian_noise([a.shape for a in clipped], std=request.dp.noise_std, rng=rng)
        clipped = [a + n for a, n in zip(clipped, noise, strict=True)]
    return clipped


def check_upload(upload: list[np.ndarray], sent: list[np.ndarray], request: Request) -> None:
    """Refuse to send an upload of the wrong shape, with non-finite values or (clipped and
    not noised here) above the clip norm (``UpdateBoundError``): this runs before SecAgg+
    masks it, after which nobody could tell it apart (``check_update``)."""
    dp = request.dp
    clipped = dp is not None and dp.noise_std == 0
    bound = _bound(request) if clipped else math.inf
    check_update(upload, expected_shapes=[np.shape(a) for a in sent], bound=bound)


def _bound(request: Request) -> float:
    """The clip norm of the request's DP with float32 slack."""
    assert request.dp is not None
    return request.dp.clip_norm * (1 + 1e-4)


def _private_upload(
    device: DeviceClient,
    upload: list[np.ndarray],
    sent: list[np.ndarray],
    request: Request,
    *,
    purpose: int = _TRAINING_NOISE,
) -> list[np.ndarray]:
    upload = privatise(device, upload, request, purpose=purpose)
    check_upload(upload, sent, request)
    return upload


def train(device: DeviceClient, parameters: list[np.ndarray], request: Request) -> FitResult:
    """One local step of the registered model; uploads only the dense update of the shared
    arrays (and its training loss when the request says the run is not private). With
    record-level DP settings in the request the step is DP-SGD
    (``stamen.client.flower.record_dp``), and the user factor is only ever trained by it."""
    model = device.model(request)
    record_dp = RecordDP.from_config(dict(request.settings))
    if record_dp is None:
        updates = model.device_updates(parameters, device.inputs(request, purpose=0))
        delta, factor, loss = updates.device(0), updates.states[0], updates.losses[0]
    else:
        if not isinstance(model.settings, LocalSettings):
            raise ValueError(f"record-level DP-SGD is not implemented for {model.name!r}")
        from stamen.client.flower.record_dp import record_dp_update  # Opacus: only for DP-SGD

        result = record_dp_update(
            parameters,
            device.factor(),
            items=device.data.train_items,
            settings=model.settings,
            record_dp=record_dp,
            rng=device.rng(request, 0),
        )
        delta, factor, loss = result.delta, result.user_factor, result.metrics["train_loss"]
    if factor is not None:
        device.keep(factor)
    metrics: dict[str, Scalar] = {"train_loss": float(loss)} if request.report_loss else {}
    return _private_upload(device, delta, parameters, request), 1, metrics


def _ranking_examples(device: DeviceClient) -> RankingExamples:
    """The device's replayed example as a batch of one (an empty list without one)."""
    example = device.ranking_example() if device.ranking_example is not None else None
    if example is None:
        example = (np.zeros((0, len(FEATURES)), np.float32), np.zeros(0, bool))
    return RankingExamples.stack([example])


def ranker_step(device: DeviceClient, parameters: list[np.ndarray], request: Request) -> FitResult:
    """This device's update of the ranker (``stamen.models.ranker.model.ranker_updates``)
    from its own replayed example; a device without one (no release, too short a history,
    nothing it took in the list) sends weight decay only."""
    check_ranker(parameters)
    settings = RankerSettings.from_config(dict(request.settings))
    deltas, _ = ranker_updates(parameters, _ranking_examples(device), settings)
    return _private_upload(device, [d[0] for d in deltas], parameters, request), 1, {}


def ranker_metrics(
    device: DeviceClient, parameters: list[np.ndarray], request: Request
) -> EvaluateResult:
    """The ranker's metrics (``RANKER_METRICS``) on the device's own offered list: what it
    took, in the top 10 as ``parameters`` order the list and as the list arrived. A device
    that took nothing in its list reports nothing."""
    check_ranker(parameters)
    values, took = list_metrics(parameters, _ranking_examples(device))
    if not took[0]:
        return 0.0, 0, {}
    return 0.0, 1, dict(zip(RANKER_METRICS, map(float, values[0]), strict=True))


def als(device: DeviceClient, parameters: list[np.ndarray], request: Request) -> FitResult:
    """Private ALS: the device's item counts, or its statistics over the head items."""
    upload = als_upload(
        parameters,
        device.data.train_items,
        request.settings,
        counts=request.task is Task.ALS_COUNTS,
    )
    return privatise(device, upload, request, purpose=_TRAINING_NOISE), 1, {}


def _answer(
    device: DeviceClient, vector: np.ndarray, request: Request, purpose: int = _ANALYTICS_NOISE
) -> list[np.ndarray]:
    scaled = [vector * float(request.settings["analytics-scale"])]
    return _private_upload(device, scaled, scaled, request, purpose=purpose)


def trending(device: DeviceClient, parameters: list[np.ndarray], request: Request) -> FitResult:
    """The device's recent items, counted newest first up to the cap, as a bounded vector."""
    times, items = device.data.train_times, device.data.train_items
    if times is None or len(times) != len(items):
        raise ValueError("this device knows no event times; it cannot answer trending")
    settings = request.settings
    vector = trending_vectors(
        np.zeros(len(items), np.int64),
        items,
        times,
        n_devices=1,
        n_items=device.data.n_items,
        now=float(settings["analytics-now"]),
        window=float(settings["analytics-window"]),
        cap=int(settings["analytics-cap"]),
    )[0]
    return _answer(device, vector, request), 1, {}


def evaluation_sum(
    device: DeviceClient, parameters: list[np.ndarray], request: Request
) -> FitResult:
    """The device's metrics of the evaluated task as a bounded vector (its first entry:
    whether it measured anything); a device that cannot evaluate that task answers with
    nothing measured."""
    assert request.evaluates is not None
    names = metric_names_from_config(str(request.settings["analytics-metrics"]))
    inner = request.with_(task=request.evaluates, evaluates=None)
    handler = device.evaluate_tasks.get(request.evaluates)
    _, n, metrics = handler(device, parameters, inner) if handler else (0.0, 0, {})
    missing = [name for name in names if n and name not in metrics]
    if missing:
        raise ValueError(f"evaluation query asks for unknown metrics {missing}")
    values = np.array([[float(metrics[name]) if n else 0.0 for name in names]])
    vector = evaluation_vectors(values, np.array([n > 0]))[0]
    return _answer(device, vector, request), 1, {}


def experiment(device: DeviceClient, parameters: list[np.ndarray], request: Request) -> FitResult:
    """The device's contribution to an experiment's measurement over the request's window
    (``Device.experiment_contribution``): its arm's block of clipped metrics (with the
    request's ``experiment-pre-start``, pre-period covariates too; its
    ``experiment-guardrails`` say which guardrails the blocks hold); zeros, the same length,
    when it serves no such experiment (it was not in it)."""
    settings = request.settings
    arms = int(settings["experiment-arms"])
    bounds = MetricBounds(
        **{k: settings[f"experiment-{k.replace('_', '-')}"] for k in MetricBounds.model_fields}
    )
    window = {
        "start": float(settings["experiment-start"]),
        "end": float(settings["experiment-end"]),
    }
    pre_start = settings.get("experiment-pre-start")
    if pre_start is not None:
        window["pre_start"] = float(pre_start)
    measure = device.experiment_contribution
    measured = (
        None
        if measure is None
        else measure(str(settings["experiment-id"]), bounds=bounds, **window)
    )
    guardrails = str(settings.get("experiment-guardrails", ""))
    metrics = metric_set(guardrails.split(",") if guardrails else ())
    width = arms * len(statistics(metrics, covariates=pre_start is not None))
    vector = np.zeros(width) if measured is None else np.asarray(measured, np.float64)
    if vector.shape != (width,):
        raise ValueError(
            f"experiment {settings['experiment-id']!r}: this device's contribution has "
            f"{vector.shape} entries, the server's {arms} arms need {width}"
        )
    purpose = _EXPERIMENT_NOISE + int(settings["experiment-place"])  # a stream per experiment
    return _answer(device, vector, request, purpose), 1, {}


def off_policy(device: DeviceClient, parameters: list[np.ndarray], request: Request) -> FitResult:
    """The device's contribution to the off-policy evaluation of the release's candidate
    policies the request names, over its window (``Device.off_policy_contribution``); zeros,
    the same length, when its release does not carry them all."""
    settings = request.settings
    names = json.loads(str(settings["off-policy-candidates"]))
    weights = json.loads(str(settings["off-policy-max-weights"]))
    measure = device.off_policy_contribution
    measured = (
        None
        if measure is None
        else measure(
            names,
            max_weights=weights,
            start=float(settings["experiment-start"]),
            end=float(settings["experiment-end"]),
            max_slots=int(settings["off-policy-max-slots"]),
            attribution_s=float(settings["experiment-attribution-s"]),
        )
    )
    size = off_policy_width(len(names))
    vector = np.zeros(size) if measured is None else np.asarray(measured, np.float64)
    if vector.shape != (size,):
        raise ValueError(
            f"off-policy evaluation of {names}: this device's contribution has "
            f"{vector.shape} entries, the server's {len(names)} candidates need {size}"
        )
    return _answer(device, vector, request, _OFF_POLICY_NOISE), 1, {}


#: What every device does with a training message, by task.
FIT_TASKS: dict[Task, FitHandler] = {
    Task.MODEL: train,
    Task.RANKER: ranker_step,
    Task.ALS_COUNTS: als,
    Task.ALS_STATISTICS: als,
    Task.TRENDING: trending,
    Task.EVALUATION_SUM: evaluation_sum,
    Task.EXPERIMENT: experiment,
    Task.OFF_POLICY: off_policy,
}

#: What every device does with an evaluation message, by task (the model's held-out
#: evaluation is the simulation's, registered by it).
EVALUATE_TASKS: dict[Task, EvaluateHandler] = {Task.RANKER: ranker_metrics}
