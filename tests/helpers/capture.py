"""A Flower ClientApp mod for tests that records every reply a device sends, and the audit
of what the devices sent for a task under SecAgg+."""

from __future__ import annotations

import pickle
import uuid
from collections import Counter
from pathlib import Path

from flwr.common import bytes_to_ndarray


class Capture:
    """A picklable Flower mod that records every reply a device sends."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, msg, context, call_next):  # noqa: ANN001, ANN204
        from stamen.client.flower.app import USER_STATE_KEY

        reply = call_next(msg, context)
        content = reply.content
        record = {
            "type": reply.metadata.message_type,
            "row": int(context.node_config["partition-id"]),
            "received_arrays": {
                k: r.to_numpy_ndarrays() for k, r in msg.content.array_records.items()
            },
            "received_configs": {k: dict(r) for k, r in msg.content.config_records.items()},
            "arrays": {k: r.to_numpy_ndarrays() for k, r in content.array_records.items()},
            "metrics": {k: dict(r) for k, r in content.metric_records.items()},
            "configs": {k: dict(r) for k, r in content.config_records.items()},
            "user_factor": (
                context.state[USER_STATE_KEY].to_numpy_ndarrays()[0]
                if USER_STATE_KEY in context.state
                else None
            ),
        }
        name = f"{reply.metadata.message_type}-{uuid.uuid4().hex}.pkl"
        (self.folder / name).write_bytes(pickle.dumps(record))
        return reply


def read_captured(folder: Path) -> list[dict]:
    """The replies :class:`Capture` recorded in ``folder``, in the order of their names."""
    return [pickle.loads(p.read_bytes()) for p in sorted(folder.glob("*.pkl"))]


def task_of(message: dict) -> str | None:
    """The ``task`` the server's fit instructions named in what ``message`` answers."""
    return message["received_configs"].get("fitins.config", {}).get("task")


def assert_masked_only(messages: list[dict], task: str, *, devices: int, width: int) -> None:
    """Each of the ``devices`` rows answered ``task`` with one SecAgg+ masked vector of
    ``width`` entries and nothing else: no parameters, one example, no metrics."""
    replies = [
        m
        for m in messages
        if task_of(m) == task and "masked_params" in m["configs"].get("secaggplus_configs", {})
    ]
    assert Counter(m["row"] for m in replies) == {row: 1 for row in range(devices)}
    for m in replies:
        assert m["arrays"] == {"fitres.parameters": []}
        assert m["metrics"] == {"fitres.num_examples": {"num_examples": 1}}
        assert m["configs"]["fitres.metrics"] == {}
        weight, *masked = [
            bytes_to_ndarray(b) for b in m["configs"]["secaggplus_configs"]["masked_params"]
        ]
        assert [a.shape for a in masked] == [(width,)]
