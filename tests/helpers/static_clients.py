"""A fixed set of connected devices standing in for Flower's ClientManager in strategy
unit tests (the strategy lists them, counts them, reads their ``cid`` and asks each once
for its device id)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from flwr.common import Code, GetPropertiesRes, Status

from stamen.models.mf.settings import DEVICE_ID_KEY


def _proxy(cid: str, device: int) -> SimpleNamespace:
    def get_properties(ins, timeout, group_id) -> GetPropertiesRes:  # noqa: ANN001
        return GetPropertiesRes(Status(Code.OK, ""), properties={DEVICE_ID_KEY: device})

    return SimpleNamespace(cid=cid, device=device, get_properties=get_properties)


class StaticClients:
    """``n`` connected devices 0…n-1 behind node ids that, as in Flower's simulation, bear
    no relation to them (a seeded shuffle; ``shuffle`` picks another one)."""

    def __init__(self, n: int, *, shuffle: int = 0) -> None:
        order = np.random.default_rng(shuffle).permutation(n)
        self.clients = {
            f"{int(node):05d}": _proxy(f"{int(node):05d}", device)
            for device, node in enumerate(order * 7919 + 11)
        }

    def all(self) -> dict:
        return self.clients

    def num_available(self) -> int:
        return len(self.clients)
