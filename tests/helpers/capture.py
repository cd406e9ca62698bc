"""A Flower ClientApp mod for tests that records every reply a device sends."""

from __future__ import annotations

import pickle
import uuid
from pathlib import Path


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
