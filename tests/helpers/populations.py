"""Small populations of timed interactions for the tests that run federated rounds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stamen.models import Interactions


def timed_population(
    items: Sequence[np.ndarray], times: Sequence[Sequence[float]], n_items: int
) -> Interactions:
    """User ``u`` interacted (value 1) with ``items[u]`` at ``times[u]``; the catalogue is
    the items ``0 .. n_items - 1``."""
    users = np.repeat(np.arange(len(items)), [len(chosen) for chosen in items])
    return Interactions.from_raw(
        users,
        np.concatenate(items),
        np.ones(len(users)),
        np.concatenate(times),
        item_ids=np.arange(n_items),
    )
