"""Federated evaluation under the protocol: each simulated device ranks its own held-out
items and reports only the metrics.

The held-out items (validation, test, the fixed sampled negatives) are the protocol's, not
the device's: the simulation hands them to the ClientApp through the evaluation handler
this module builds (``stamen.client.flower.tasks``' registry), so the device library
itself never knows of test items.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from stamen.client.flower.app import DeviceClient
from stamen.client.flower.tasks import EVALUATE_TASKS, EvaluateHandler
from stamen.models.batches import UserItems
from stamen.models.metrics import batch_metrics, target_nll
from stamen.models.wire import Request, Task
from stamen.privacy import RecordDP
from stamen.server.analytics import DEFAULT_CUTOFFS, evaluation_metrics
from stamen.simulation.protocol.split import Split

__all__ = ["VALID_METRICS", "HeldOut", "evaluate_tasks", "held_out_evaluation"]

#: Validation metrics a device reports beside the test metrics (prefixed ``valid_``).
VALID_METRICS = ("hr@10", "ndcg@10", "sampled_hr@10")


@dataclass(frozen=True)
class HeldOut:
    """A device's held-out items: its validation and test items (the protocol's order;
    empty: none) and the fixed sampled negatives (``-1``: none)."""

    valid: np.ndarray
    test: np.ndarray
    negatives: np.ndarray

    @classmethod
    def of(cls, split: Split, row: int) -> HeldOut:
        """Row ``row``'s held-out items in ``split`` (its padding dropped)."""
        valid, test = split.valid[row], split.test[row]
        return cls(valid[valid >= 0], test[test >= 0], split.negatives[row])

    @property
    def evaluable(self) -> bool:
        """Whether the device holds validation and test items."""
        return len(self.test) > 0 and len(self.valid) > 0


def held_out_evaluation(
    held_out: Callable[[int], HeldOut], *, cutoffs: tuple[int, ...] = DEFAULT_CUTOFFS
) -> EvaluateHandler:
    """The model's evaluation handler over the devices' held-out items (``held_out(row)``),
    its @k metrics at the protocol's ``cutoffs``.

    The device ranks its test items (train and validation items excluded) and its
    validation items (train items excluded, ``valid_`` metrics); its loss is the mean over
    its test items of their negative log-softmax. Under record-level DP the state
    re-fitted for ranking is not stored: the stored factor, which the next DP-SGD step
    starts from, comes from DP-SGD alone."""
    reported = evaluation_metrics(cutoffs)

    def evaluate(
        device: DeviceClient, parameters: list[np.ndarray], request: Request
    ) -> tuple[float, int, dict]:
        held = held_out(device.row)
        if not held.evaluable:
            return 0.0, 0, {}
        data = device.data
        model = device.model(request)
        train = UserItems.single(data.train_items, n_items=data.n_items)
        scores, states = model.scores_and_states(parameters, device.inputs(request, purpose=1))
        if RecordDP.from_config(dict(request.settings)) is None and states[0] is not None:
            device.keep(states[0])
        test, valid = held.test[None, :], held.valid[None, :]
        nll = float(target_nll(scores, test)[0])
        negatives = held.negatives[None, :]
        seen = UserItems.single(np.append(data.train_items, held.valid), n_items=data.n_items)
        metrics = {  # what the secure evaluation sums too (precision and MAP are not)
            name: float(values[0])
            for name, values in batch_metrics(
                scores, test, exclude=seen, negatives=negatives, ks=cutoffs
            ).items()
            if name in reported
        }
        for name, values in batch_metrics(
            scores, valid, exclude=train, negatives=negatives, ks=(10,)
        ).items():
            if name in VALID_METRICS:
                metrics[f"valid_{name}"] = float(values[0])
        return nll, 1, metrics

    return evaluate


def evaluate_tasks(
    held_out: Callable[[int], HeldOut], *, cutoffs: tuple[int, ...] = DEFAULT_CUTOFFS
) -> dict[Task, EvaluateHandler]:
    """What a simulated device evaluates: every device's tasks and the model's held-out
    evaluation at ``cutoffs``."""
    return {**EVALUATE_TASKS, Task.MODEL: held_out_evaluation(held_out, cutoffs=cutoffs)}
