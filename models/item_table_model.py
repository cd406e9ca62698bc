"""The base of the models whose one shared array is an item embedding table (PFedRec's,
FedRAP's global table): ``items.weight``, ``(n_items, dim)``, drawn from N(0, init_std²),
quantisable, and uploaded as the dense change of a device's fine-tuned copy; what a device
keeps of its own is the subclass's."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from stamen.models.registry import DeviceUpdates, RecModel

__all__ = ["ItemTableModel"]

#: The name of the one shared array.
TABLE = "items.weight"


class ItemTableModel(RecModel):
    """A :class:`RecModel` with one shared item table; its settings have ``dim`` and
    ``init_std``."""

    settings: Any

    def shared_names(self) -> tuple[str, ...]:
        """The item table, ``items.weight``."""
        return (TABLE,)

    def shared_shapes(self) -> list[tuple[int, ...]]:
        """``(n_items, dim)``."""
        return [(self.n_items, self.settings.dim)]

    def init_shared(self, seed: int) -> list[np.ndarray]:
        """The item table drawn from N(0, init_std²) by ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        table = torch.randn(self.n_items, self.settings.dim, generator=generator)
        return [(table * self.settings.init_std).numpy()]

    def quantizable(self) -> tuple[str, ...]:
        """The item table."""
        return (TABLE,)

    @staticmethod
    def table_updates(
        shared: list[np.ndarray],
        tables: torch.Tensor,
        states: torch.Tensor,
        losses: np.ndarray,
    ) -> DeviceUpdates:
        """Each device's upload, the dense change ``tables - shared[0]`` of its copy of
        the table, and the private ``states`` it keeps (one row per device)."""
        delta = (tables - torch.from_numpy(np.asarray(shared[0], np.float32))).numpy()
        kept = tuple(row.numpy().copy() for row in states)
        return DeviceUpdates([delta], kept, losses.astype(np.float64))
