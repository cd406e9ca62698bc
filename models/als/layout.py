"""The layout of private ALS statistics: one flat vector per device, summed by SecAgg+.

``stamen.client.flower.statistics`` fills it on the devices; ``stamen.server.als`` solves the
item side from the (noisy) sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["ALSLayout", "als_sensitivity"]


def als_sensitivity(*, user_clip: float, cap: int, item_grams: bool = True) -> float:
    """Largest L2 norm of one device's ALS statistics: ``|p̃|² = user_clip² + 1`` for the
    global Gram, and item weights whose squares sum to at most ``cap`` on the per-item
    Grams (``|p̃|²`` each) and right-hand sides (``|p̃|`` each)."""
    r2 = user_clip**2 + 1.0
    per_item = (r2 * r2 if item_grams else 0.0) + r2
    return math.sqrt(r2 * r2 + cap * per_item)


@dataclass(frozen=True)
class ALSLayout:
    """Where each statistic sits in the flat vector: the global Gram ``(d1, d1)``, then
    (with ``item_grams``) ``len(head)`` per-item Grams ``(d1, d1)``, then the head items'
    right-hand sides ``(d1,)``, with ``d1 = dim + 1``. ``head`` holds the item rows
    (sorted) the statistics cover."""

    dim: int
    head: np.ndarray
    item_grams: bool = True

    @property
    def d1(self) -> int:
        """Width of ``p̃ = [p, 1]``."""
        return self.dim + 1

    @property
    def size(self) -> int:
        """Length of the flat vector."""
        return self._grams_end + len(self.head) * self.d1

    @property
    def _grams_end(self) -> int:
        d1 = self.d1
        return d1 * d1 * (1 + (len(self.head) if self.item_grams else 0))

    def split(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """``(gram (..., d1, d1), item_grams (..., H, d1, d1) or None, rhs (..., H, d1))``
        views of ``flat`` (``(..., size)``)."""
        d1, h, lead = self.d1, len(self.head), flat.shape[:-1]
        gram = flat[..., : d1 * d1].reshape(*lead, d1, d1)
        grams = None
        if self.item_grams:
            grams = flat[..., d1 * d1 : self._grams_end].reshape(*lead, h, d1, d1)
        rhs = flat[..., self._grams_end :].reshape(*lead, h, d1)
        return gram, grams, rhs
