"""Two training rounds of one device through the ClientApp, for the models that keep a
private state between rounds (PFedRec, FedRAP): what it uploaded, what it kept, and what
round 2 would have uploaded had it started from a fresh state."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stamen.client.flower.app import DeviceClient, DeviceData
from stamen.models.registry import DeviceInputs, RecModel
from stamen.models.wire import Request, Task


@dataclass
class TwoRounds:
    """``uploads[r]`` and ``kept[r]``: round ``r + 1``'s upload and kept state; ``fresh``:
    round 2's upload from a fresh state."""

    shared: list[np.ndarray]
    uploads: list[list[np.ndarray]]
    kept: list[np.ndarray]
    fresh: list[np.ndarray]


def two_rounds(model: RecModel, history: tuple[int, ...] = (1, 5, 7)) -> TwoRounds:
    """One device (``history``) trains rounds 1 and 2 from ``model.init_shared(0)``."""
    shared = model.init_shared(0)
    client = DeviceClient(DeviceData(np.array(history), model.catalog), {}, seed=0, row=4)  # type: ignore[arg-type]
    settings = {"model": model.name, **model.settings.to_config()}
    uploads, kept = [], []
    for rnd in (1, 2):
        config = Request(task=Task.MODEL, round=rnd, settings=settings).to_config()
        uploads.append(client.fit(shared, config)[0])
        state = client.factor()
        assert state is not None
        kept.append(state)
    inputs = client.inputs(Request(task=Task.MODEL, round=2, settings=settings), purpose=0)
    fresh = DeviceInputs(history=inputs.history, seeds=inputs.seeds, round=2)
    return TwoRounds(shared, uploads, kept, model.device_updates(shared, fresh).deltas[0])
