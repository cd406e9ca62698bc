"""The evaluation protocol's split: per-user leave-one-out by time, plus fixed negatives.

For each user with at least three interactions, the latest interaction is the test item,
the one before it the validation item, and the rest train. Interactions in the same second
(common in MovieLens) are ordered by a seeded shuffle, never by item id. Without timestamps
(HetRec Last.fm-2K), or with ``holdout="random"``, the order is a seeded random
permutation. Users with fewer than three
interactions keep them all for training and are not evaluated; ``Split.stats`` counts them.
With timestamps, every training item carries its event context (hour of day, weekday, in
UTC) and each held-out item the context of its event (the request it answers).

Sampled negatives: ``n_negatives`` items per evaluated user, drawn once with the seed,
uniformly without replacement from the items that user never interacted with (train,
validation and test all excluded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from stamen.models import DataError, Interactions
from stamen.models.batches import UserItems
from stamen.models.two_tower.context import UNKNOWN_CONTEXT, timestamp_contexts

__all__ = ["Split", "leave_one_out", "sample_negatives"]

#: Users per chunk when drawing negatives (bounds memory at chunk × n_items floats).
_CHUNK = 1024


@dataclass(frozen=True)
class Split:
    """Train rows, one validation and one test item per user (-1: not evaluated), the
    fixed sampled negatives ``(n_users, n_negatives)`` (-1 rows: not evaluated) and, with
    timestamps, the contexts ``(n_users, 2)`` of the validation and test events and the
    time (seconds) of each training event, in ``train.items`` order."""

    train: UserItems
    valid: np.ndarray
    test: np.ndarray
    negatives: np.ndarray
    seed: int
    valid_context: np.ndarray | None = None
    test_context: np.ndarray | None = None
    train_times: np.ndarray | None = None

    def query_context(self, stage: str) -> np.ndarray | None:
        """The contexts of the ``"valid"`` or ``"test"`` events (``None``: unknown)."""
        return self.valid_context if stage == "valid" else self.test_context

    @property
    def n_users(self) -> int:
        """Number of users (rows)."""
        return self.train.n_users

    @property
    def n_items(self) -> int:
        """Number of catalogue items."""
        return self.train.n_items

    @property
    def evaluated(self) -> np.ndarray:
        """Indices of the users that have validation and test items."""
        return np.flatnonzero(self.test >= 0)

    def seen(self, *, include_valid: bool) -> UserItems:
        """Items to exclude from ranking: train (and validation) items per user."""
        if not include_valid:
            return self.train
        extra = self.valid >= 0
        users = np.concatenate([self.train.pairs()[0], np.flatnonzero(extra)])
        items = np.concatenate([self.train.items, self.valid[extra]])
        return UserItems.from_pairs(users, items, n_users=self.n_users, n_items=self.n_items)

    def select(self, users: np.ndarray) -> Split:
        """The split restricted to ``users`` (row indices), in that order."""
        users = np.asarray(users, np.int64)
        return Split(
            train=self.train.select(users),
            valid=self.valid[users],
            test=self.test[users],
            negatives=self.negatives[users],
            seed=self.seed,
            valid_context=None if self.valid_context is None else self.valid_context[users],
            test_context=None if self.test_context is None else self.test_context[users],
        )

    def stats(self) -> dict[str, int]:
        """Counts describing the split."""
        return {
            "users": self.n_users,
            "items": self.n_items,
            "train_interactions": int(len(self.train.items)),
            "evaluated_users": int((self.test >= 0).sum()),
            "train_only_users": int((self.test < 0).sum()),
        }


def leave_one_out(
    interactions: Interactions,
    *,
    seed: int,
    n_negatives: int = 99,
    holdout: Literal["temporal", "random"] = "temporal",
) -> Split:
    """Split ``interactions`` per user (see module docstring): ``holdout`` ``"temporal"``
    holds out each user's latest items, ``"random"`` items in a seeded random order."""
    if holdout not in ("temporal", "random"):
        raise ValueError(f"holdout must be 'temporal' or 'random', not {holdout!r}")
    rng = np.random.default_rng(seed)
    n = len(interactions)
    tiebreak = rng.permutation(n)
    if interactions.timestamp is None or holdout == "random":
        order = np.lexsort((tiebreak, interactions.user))
    else:
        order = np.lexsort((tiebreak, interactions.timestamp, interactions.user))
    users = interactions.user[order]
    items = interactions.item[order]
    counts = np.bincount(users, minlength=interactions.n_users)
    ends = np.cumsum(counts)
    evaluated = counts >= 3
    test = np.full(interactions.n_users, -1, np.int64)
    valid = np.full(interactions.n_users, -1, np.int64)
    test[evaluated] = items[ends[evaluated] - 1]
    valid[evaluated] = items[ends[evaluated] - 2]
    held = np.zeros(n, dtype=bool)
    held[ends[evaluated] - 1] = True
    held[ends[evaluated] - 2] = True
    contexts = valid_context = test_context = timestamps = None
    if interactions.timestamp is not None:
        timestamps = np.asarray(interactions.timestamp[order], np.float64)
        contexts = timestamp_contexts(interactions.timestamp[order])
        valid_context = np.tile(np.array(UNKNOWN_CONTEXT, np.int64), (interactions.n_users, 1))
        test_context = valid_context.copy()
        test_context[evaluated] = contexts[ends[evaluated] - 1]
        valid_context[evaluated] = contexts[ends[evaluated] - 2]
    train = UserItems.from_pairs(
        users[~held],
        items[~held],
        n_users=interactions.n_users,
        n_items=interactions.n_items,
        contexts=None if contexts is None else contexts[~held],
    )
    all_items = UserItems.from_pairs(
        users, items, n_users=interactions.n_users, n_items=interactions.n_items
    )
    short = evaluated & (interactions.n_items - all_items.counts() < n_negatives)
    if short.any():  # name the person as the data names them, and the way out
        u = int(np.flatnonzero(short)[0])
        raise DataError(
            f"user {interactions.user_ids[u]!r} has {interactions.n_items - counts[u]} items "
            f"they have not interacted with, and the sampled protocol draws {n_negatives} "
            f"of them ({int(short.sum())} users are short): the catalogue needs at least "
            f"{n_negatives + int(counts[short].max())} items (`stamen data inspect` says "
            "so before a run)"
        )
    negatives = sample_negatives(all_items, evaluated, n_negatives=n_negatives, rng=rng)
    return Split(
        train=train,
        valid=valid,
        test=test,
        negatives=negatives,
        seed=seed,
        valid_context=valid_context,
        test_context=test_context,
        train_times=None if timestamps is None else timestamps[~held],
    )


def sample_negatives(
    seen: UserItems, users_mask: np.ndarray, *, n_negatives: int, rng: np.random.Generator
) -> np.ndarray:
    """``n_negatives`` distinct unseen items per masked user, uniform without replacement
    (the smallest of i.i.d. uniform keys over the unseen items), -1 rows elsewhere."""
    out = np.full((seen.n_users, n_negatives), -1, np.int64)
    if n_negatives == 0:
        return out
    short = users_mask & (seen.n_items - seen.counts() < n_negatives)
    if short.any():
        u = int(np.flatnonzero(short)[0])
        raise DataError(
            f"user index {u} has only {seen.n_items - seen.counts()[u]} unseen items; "
            f"{n_negatives} sampled negatives are needed"
        )
    chosen = np.flatnonzero(users_mask)
    for start in range(0, len(chosen), _CHUNK):
        block = chosen[start : start + _CHUNK]
        keys = rng.random((len(block), seen.n_items))
        sub = seen.select(block)
        rows, items = sub.pairs()
        keys[rows, items] = np.inf
        picked = np.argpartition(keys, n_negatives - 1, axis=1)[:, :n_negatives]
        out[block] = np.sort(picked, axis=1)
    return out
