"""The item side shared by the models whose items are embedded from their public content
(the two-tower and the sequential model): the catalogue's content features, built only when
something needs them, and the whole catalogue's embeddings, which a device derives once per
release and keeps (``RecModel.serving``'s ``cache``), so that reopening it derives nothing.
"""

from __future__ import annotations

import functools
from collections.abc import MutableMapping
from typing import Any

import numpy as np
import torch
from torch.func import functional_call

from stamen.models.bundle import ReleaseCatalog
from stamen.models.two_tower.features import feature_width, item_features

__all__ = ["ITEM_BIAS", "ITEM_EMBEDDING", "ContentItems"]

ITEM_EMBEDDING = "items.embedding"
"""The ``cache`` key of the catalogue's ``(n_items, dim)`` float32 embeddings."""

ITEM_BIAS = "items.bias"
"""The ``cache`` key of the catalogue's ``(n_items,)`` float32 biases."""


class ContentItems:
    """Mixin for a ``RecModel`` whose network embeds items from their content features
    with its ``items`` method (``net(\"items\", features, ids)``)."""

    catalog: ReleaseCatalog
    settings: Any
    n_items: int
    net: Any  # the family's network

    def _params(self, shared: list[np.ndarray]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def feature_width(self) -> int:
        """Columns of :attr:`features`, known without building them."""
        return feature_width(len(self.catalog.genre_names), self.settings.title_buckets)

    @functools.cached_property
    def features(self) -> torch.Tensor:
        """The catalogue's ``(n_items, feature_width)`` content matrix
        (:func:`~stamen.models.two_tower.features.item_features`), built on first use: a
        device that finds its item embeddings cached never builds it."""
        built = item_features(self.catalog, title_buckets=self.settings.title_buckets)
        return torch.from_numpy(built)

    def item_embeddings(self, shared: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole catalogue through the item side: ``(n_items, dim)`` and ``(n_items,)``
        (a device computes this once per release)."""
        params = self._params(shared)
        with torch.no_grad():
            ids = torch.arange(self.n_items)
            return functional_call(self.net, params, ("items", self.features, ids))

    def served_items(
        self, shared: list[np.ndarray], cache: MutableMapping[str, np.ndarray] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`item_embeddings`, read from ``cache`` where it holds them for these
        ``shared`` arrays' release, else computed and added to it."""
        known = {} if cache is None else cache
        emb, bias = known.get(ITEM_EMBEDDING), known.get(ITEM_BIAS)
        if (
            emb is not None
            and bias is not None
            and emb.shape[0] == bias.shape[0] == self.n_items
            and emb.dtype == bias.dtype == np.float32
        ):
            return torch.from_numpy(emb), torch.from_numpy(bias)
        computed, biases = self.item_embeddings(shared)
        if cache is not None:
            cache[ITEM_EMBEDDING], cache[ITEM_BIAS] = computed.numpy(), biases.numpy()
        return computed, biases
