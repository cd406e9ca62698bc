"""Stamen's Flower ClientApp: one device taking part in federated training of any
registered model (``stamen.models.registry``; the request's ``model`` key names it).

Each message opens the device of its partition (``stamen.client.VirtualDevices``) and
trains on the person's items as the device knows them, through the model's batch-first
device step called for this one device. A model's private state (MF's user factor) is
kept in the node's ``context.state`` between rounds and never put into a message. Each
message carries one typed request (``stamen.models.wire.Request``); the device does its
task through a registry of handlers (``stamen.client.flower.tasks``): the model's step,
the ranker's, private ALS's statistics, analytics answers, the ranker's metrics. Held-out
evaluation of the model is the simulation's handler, registered by it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, RecordDict
from flwr.client import Client, ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import Mod

from stamen.client.flower.tasks import EVALUATE_TASKS, FIT_TASKS, EvaluateHandler, FitHandler
from stamen.client.flower.virtual import VirtualDevices
from stamen.models.batches import UserItems
from stamen.models.bundle import ReleaseCatalog
from stamen.models.mf.settings import DEVICE_ID_KEY
from stamen.models.registry import DeviceInputs, RecModel, device_seeds, model_class
from stamen.models.wire import Request, Task
from stamen.privacy import SignatureError, verify_arrays

__all__ = [
    "USER_STATE_KEY",
    "DeviceClient",
    "ExperimentContribution",
    "DeviceData",
    "OffPolicyContribution",
    "build_client_app",
    "make_client_fn",
]

#: Key of the user factor in the node's persistent ``context.state``.
USER_STATE_KEY = "stamen-user-factor"

#: ``contribution(experiment, start=…, end=…, bounds=…)``: a device's contribution to an
#: experiment's measurement, ``None`` when it serves no such experiment.
ExperimentContribution = Callable[..., np.ndarray | None]
#: ``contribution(candidates, max_weights=…, start=…, end=…, max_slots=…, attribution_s=…)``:
#: a device's contribution to an off-policy evaluation (``Device.off_policy_contribution``),
#: ``None`` when its release does not carry the candidates.
OffPolicyContribution = Callable[..., np.ndarray | None]


@dataclass(frozen=True)
class DeviceData:
    """What a device trains on: its items (catalogue rows), the installed release's
    catalogue, and its items' event contexts and latest event times in seconds
    (``None``: unknown)."""

    train_items: np.ndarray
    catalog: ReleaseCatalog
    train_contexts: np.ndarray | None = None
    train_times: np.ndarray | None = None

    @property
    def n_items(self) -> int:
        """Items in the installed release's catalogue."""
        return len(self.catalog)


class DeviceClient(NumPyClient):
    """A device holding one person's interactions, answering the server's requests by
    task (``stamen.client.flower.tasks``; see module docstring).

    Args:
        data: what the device trains on.
        state: the node's persistent state (the model's private state lives there).
        seed: the device's randomness (a simulation's run seed; a deployed device's own).
        row: the device's stable id.
        release_key: the public key releases must be signed with (``None``: unsigned).
        ranking_example: the device's replayed example for the ranker, built on demand.
        experiment_contribution: the device's contribution to an experiment's measurement
            (``Device.experiment_contribution``'s arguments), computed on demand; ``None``:
            the device serves no experiments.
        off_policy_contribution: the device's contribution to an off-policy evaluation
            (``Device.off_policy_contribution``'s arguments), computed on demand; ``None``:
            the device has no impression log to evaluate on.
        fit_tasks, evaluate_tasks: what the device does with each task (default: what
            every device can do).
    """

    def __init__(
        self,
        data: DeviceData,
        state: RecordDict,
        *,
        seed: int,
        row: int,
        release_key: bytes | None = None,
        ranking_example: Callable[[], tuple[np.ndarray, np.ndarray] | None] | None = None,
        experiment_contribution: ExperimentContribution | None = None,
        off_policy_contribution: OffPolicyContribution | None = None,
        fit_tasks: Mapping[Task, FitHandler] = FIT_TASKS,
        evaluate_tasks: Mapping[Task, EvaluateHandler] = EVALUATE_TASKS,
    ) -> None:
        self.data = data
        self.state = state
        self.seed = seed
        self.row = row
        self.release_key = release_key
        # the device's replayed example for the ranker (Device.ranking_example), built
        # only when a ranker round asks for it
        self.ranking_example = ranking_example
        self.experiment_contribution = experiment_contribution
        self.off_policy_contribution = off_policy_contribution
        self.fit_tasks = fit_tasks
        self.evaluate_tasks = evaluate_tasks

    def get_properties(self, config: dict) -> dict:
        """The device's stable id (its partition), by which the server samples cohorts."""
        return {DEVICE_ID_KEY: self.row}

    def _request(self, parameters: list[np.ndarray], config: dict) -> Request:
        """The decoded request, after its global model's Ed25519 signature verified."""
        request = Request.from_config(config)
        if self.release_key is not None:
            if request.signature is None:
                raise SignatureError(
                    "model release is unsigned; this device requires signed releases"
                )
            verify_arrays(
                parameters, request.signature, round=request.round, public_key=self.release_key
            )
        return request

    def rng(self, request: Request, purpose: int) -> np.random.Generator:
        """The device's generator for ``purpose`` in the request's round."""
        return np.random.default_rng([self.seed, self.row, request.round, purpose])

    def factor(self) -> np.ndarray | None:
        """The model's private state kept between rounds (MF's user factor), if any."""
        if USER_STATE_KEY in self.state:
            return self.state[USER_STATE_KEY].to_numpy_ndarrays()[0]  # type: ignore[union-attr]
        return None

    def keep(self, factor: np.ndarray) -> None:
        """Keep the model's private state for the next round (never sent)."""
        self.state[USER_STATE_KEY] = ArrayRecord(numpy_ndarrays=[factor.astype(np.float32)])

    def model(self, request: Request) -> RecModel:
        """The requested model family with the settings the request carries."""
        cls = model_class(str(request.settings.get("model", "mf")))
        return cls(cls.settings_from(request.settings), self.data.catalog)

    def inputs(self, request: Request, *, purpose: int) -> DeviceInputs:
        """The model's input for this one device: its history, seeds and private state."""
        seeds = device_seeds(
            np.array([self.row]), seed=self.seed, rnd=request.round, purpose=purpose
        )
        history = UserItems.single(
            self.data.train_items, n_items=self.data.n_items, contexts=self.data.train_contexts
        )
        return DeviceInputs(
            history=history, seeds=seeds, states=(self.factor(),), round=request.round
        )

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        """Do the request's task (``FIT_TASKS``) and return what leaves the device."""
        request = self._request(parameters, config)
        handler = self.fit_tasks.get(request.task)
        if handler is None:
            raise ValueError(f"this device does no {request.task.value!r} training task")
        return handler(self, parameters, request)

    def evaluate(self, parameters: list[np.ndarray], config: dict) -> tuple[float, int, dict]:
        """Evaluate the request's task on the device (``EVALUATE_TASKS``); a device with
        nothing to evaluate for it reports no examples."""
        request = self._request(parameters, config)
        handler = self.evaluate_tasks.get(request.task)
        return handler(self, parameters, request) if handler else (0.0, 0, {})


def make_client_fn(
    devices: VirtualDevices,
    *,
    seed: int,
    evaluate_tasks: Mapping[Task, EvaluateHandler] = EVALUATE_TASKS,
) -> Callable[[Context], Client]:
    """A ``client_fn`` for the virtual device ``partition-id`` of ``devices``; it accepts
    only global models signed with the key the devices pin. ``evaluate_tasks``: what the
    devices evaluate (a simulation adds its held-out evaluation)."""

    def client_fn(context: Context) -> Client:
        torch.set_num_threads(1)
        row = int(context.node_config["partition-id"])
        with devices.open(row) as device:
            items, catalog = device.history_indices(), device.catalog
            contexts, times = device.history_contexts(), device.history_times()
        if catalog is None:
            raise RuntimeError(f"{devices.path(row)}: no release installed; provision it first")
        data = DeviceData(items, catalog, contexts, times)

        def ranking_example() -> tuple[np.ndarray, np.ndarray] | None:
            with devices.open(row) as device:
                return device.ranking_example()

        def experiment_contribution(experiment: str, **window: Any) -> np.ndarray | None:
            with devices.open(row) as device:
                return device.experiment_contribution(experiment, **window)

        def off_policy_contribution(candidates: list[str], **window: Any) -> np.ndarray | None:
            with devices.open(row) as device:
                return device.off_policy_contribution(candidates, **window)

        client = DeviceClient(
            data,
            context.state,
            seed=seed,
            row=row,
            release_key=devices.release_key,
            ranking_example=ranking_example,
            experiment_contribution=experiment_contribution,
            off_policy_contribution=off_policy_contribution,
            evaluate_tasks=evaluate_tasks,
        )
        return client.to_client()

    return client_fn


def build_client_app(
    devices: VirtualDevices,
    *,
    seed: int,
    secure_aggregation: bool,
    evaluate_tasks: Mapping[Task, EvaluateHandler] = EVALUATE_TASKS,
    outer_mods: Sequence[Mod] = (),
) -> ClientApp:
    """The ClientApp for the virtual ``devices``; with ``secure_aggregation`` every update
    goes through Flower's SecAgg+ mod before it leaves the device. ``outer_mods`` wrap
    everything (they see exactly what the device sends; tests audit with them)."""
    mods = [*outer_mods, *([secaggplus_mod] if secure_aggregation else [])]
    client_fn = make_client_fn(devices, seed=seed, evaluate_tasks=evaluate_tasks)
    return ClientApp(client_fn=client_fn, mods=mods)
