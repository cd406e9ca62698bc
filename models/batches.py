"""Per-user positive items in compressed-row form, and the batches the training loop eats.

:class:`UserItems` is numpy only (a device holds one row); torch loads with the functions
that build tensors (:meth:`UserItems.mask`, :func:`user_batches`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["Batch", "UserItems", "user_batches"]


@dataclass(frozen=True)
class UserItems:
    """Compressed rows: the items of user ``u`` are ``items[indptr[u]:indptr[u + 1]]``;
    ``contexts`` (``None``: none known) is each item's event context ``(len(items), 2)``
    (``stamen.models.two_tower.context``), in the same order."""

    indptr: np.ndarray
    items: np.ndarray
    n_items: int
    contexts: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.indptr.ndim != 1 or len(self.indptr) < 1 or self.indptr[0] != 0:
            raise ValueError("indptr must be 1-D and start at 0")
        if self.indptr[-1] != len(self.items):
            raise ValueError("indptr[-1] must equal len(items)")
        if len(self.items) and (self.items.min() < 0 or self.items.max() >= self.n_items):
            raise ValueError(f"item index outside [0, {self.n_items})")
        if self.contexts is not None and np.shape(self.contexts) != (len(self.items), 2):
            raise ValueError(
                f"contexts must be ({len(self.items)}, 2), got {np.shape(self.contexts)}"
            )

    @classmethod
    def from_pairs(
        cls,
        users: np.ndarray,
        items: np.ndarray,
        *,
        n_users: int,
        n_items: int,
        contexts: np.ndarray | None = None,
    ) -> UserItems:
        """Build rows from parallel (user, item[, context]) arrays; order within a row is
        kept."""
        order = np.argsort(users, kind="stable")
        counts = np.bincount(users, minlength=n_users)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(
            indptr=indptr,
            items=np.asarray(items, np.int64)[order],
            n_items=n_items,
            contexts=None if contexts is None else np.asarray(contexts, np.int64)[order],
        )

    @classmethod
    def single(
        cls, items: np.ndarray, *, n_items: int, contexts: np.ndarray | None = None
    ) -> UserItems:
        """One user's items (what a device holds), with their contexts if known."""
        items = np.asarray(items, np.int64)
        return cls(
            indptr=np.array([0, len(items)], np.int64),
            items=items,
            n_items=n_items,
            contexts=None if contexts is None else np.asarray(contexts, np.int64),
        )

    @property
    def n_users(self) -> int:
        """Number of rows."""
        return len(self.indptr) - 1

    def counts(self) -> np.ndarray:
        """Items per user."""
        return np.diff(self.indptr)

    def row(self, user: int) -> np.ndarray:
        """The items of one user."""
        return self.items[self.indptr[user] : self.indptr[user + 1]]

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Parallel (user, item) arrays."""
        users = np.repeat(np.arange(self.n_users, dtype=np.int64), self.counts())
        return users, self.items

    def select(self, users: np.ndarray) -> UserItems:
        """The rows of ``users``, in that order."""
        users = np.asarray(users, np.int64)
        counts = self.counts()[users]
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        starts = self.indptr[users]
        offsets = np.arange(indptr[-1]) - np.repeat(indptr[:-1], counts)
        taken = np.repeat(starts, counts) + offsets
        return UserItems(
            indptr=indptr,
            items=self.items[taken],
            n_items=self.n_items,
            contexts=None if self.contexts is None else self.contexts[taken],
        )

    def mask(self) -> torch.Tensor:
        """Dense boolean ``(n_users, n_items)`` membership (use on small batches only)."""
        import torch

        out = torch.zeros(self.n_users, self.n_items, dtype=torch.bool)
        users, items = self.pairs()
        out[torch.from_numpy(users), torch.from_numpy(items)] = True
        return out


@dataclass(frozen=True)
class Batch:
    """Users of a batch and their positives as (row within batch, item) pairs."""

    users: torch.Tensor
    rows: torch.Tensor
    items: torch.Tensor


def user_batches(
    data: UserItems,
    *,
    batch_size: int,
    rng: np.random.Generator | None = None,
    user_index: np.ndarray | None = None,
) -> Iterator[Batch]:
    """Yield batches of whole users (all of each user's positives), shuffled when ``rng``
    is given. ``user_index`` maps rows of ``data`` to rows of the model's user table
    (identity by default)."""
    import torch

    order = np.arange(data.n_users)
    if rng is not None:
        order = rng.permutation(order)
    counts = data.counts()
    order = order[counts[order] > 0]
    index = order if user_index is None else np.asarray(user_index)[order]
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        sub = data.select(chunk)
        rows, items = sub.pairs()
        yield Batch(
            users=torch.from_numpy(index[start : start + batch_size].astype(np.int64)),
            rows=torch.from_numpy(rows),
            items=torch.from_numpy(items),
        )
