"""A fixed set of connected devices standing in for Flower's ClientManager in strategy
unit tests (the strategy only lists them, counts them, and reads their ``cid``)."""

from __future__ import annotations

from types import SimpleNamespace


class StaticClients:
    """``n`` connected devices with cids ``"000"``, ``"001"``, …"""

    def __init__(self, n: int) -> None:
        self.clients = {f"{i:03d}": SimpleNamespace(cid=f"{i:03d}") for i in range(n)}

    def all(self) -> dict:
        return self.clients

    def num_available(self) -> int:
        return len(self.clients)
