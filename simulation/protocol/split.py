"""The evaluation protocol's split: per-user leave-one-out or a ratio split, in time order
or a seeded random order, plus fixed negatives.

Each user's interactions are put in the holdout order: by time, interactions in the same
second (common in MovieLens) ordered by a seeded shuffle, never by item id; without
timestamps (HetRec Last.fm-2K), or with ``holdout="random"``, a seeded random
permutation. Of a user's ``n`` interactions in that order, the last ``m`` are the test
items, the ``m`` before them the validation items, and the rest train:

- leave-one-out: ``m = 1``;
- ratio split (``test_ratio`` r, ``0 < r < 0.5``): ``m = min(ceil(r * n), (n - 1) // 2)``,
  with ``r * n`` computed exactly on the decimal ratio as written (0.1 of 30 is 3), so at
  least one test, one validation and one train item: r = 0.2 holds out 1 + 1 of 3 to 5
  interactions and 2 + 2 of 6 to 10; r = 0.4 holds out 1 + 1 of 4 (the cap: not 2 + 2).

Users with fewer than three interactions keep them all for training and are not
evaluated; ``Split.stats`` counts them. ``Split.valid`` and ``Split.test`` are
``(n_users, T)``, each row the user's held-out items in holdout order padded with -1
(``T = 1`` for leave-one-out). With timestamps, every training item carries its event
context (hour of day, weekday, in UTC) and each stage the context of its first held-out
event (the request its items answer).

Sampled negatives: ``n_negatives`` items per evaluated user, drawn once with the seed,
uniformly without replacement from the items that user never interacted with (train,
validation and test all excluded); every held-out item of the user is ranked among them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import numpy as np

from stamen.models import DataError, Interactions
from stamen.models.batches import UserItems
from stamen.models.two_tower.context import UNKNOWN_CONTEXT, timestamp_contexts

__all__ = ["Holdout", "Split", "leave_one_out", "ratio_split", "sample_negatives"]

#: The order held-out items are taken in (see the module docstring).
Holdout = Literal["temporal", "random"]

#: Users per chunk when drawing negatives (bounds memory at chunk × n_items floats).
_CHUNK = 1024


@dataclass(frozen=True)
class Split:
    """Train rows, the validation and test items ``(n_users, T)`` (each row in holdout
    order, padded with -1; an all -1 row: not evaluated), the fixed sampled negatives
    ``(n_users, n_negatives)`` (-1 rows: not evaluated) and, with timestamps, the contexts
    ``(n_users, 2)`` of each stage's first held-out event and the time (seconds) of each
    training event, in ``train.items`` order."""

    train: UserItems
    valid: np.ndarray
    test: np.ndarray
    negatives: np.ndarray
    seed: int
    valid_context: np.ndarray | None = None
    test_context: np.ndarray | None = None
    train_times: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("valid", "test"):
            shape = getattr(self, name).shape
            if len(shape) != 2 or shape[0] != self.train.n_users:
                raise ValueError(f"{name} must be ({self.train.n_users}, T), not {shape}")

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
        return np.flatnonzero(self.test[:, 0] >= 0)

    def seen(self, *, include_valid: bool) -> UserItems:
        """Items to exclude from ranking: train (and, after them, validation) items per
        user."""
        if not include_valid:
            return self.train
        extra = self.valid >= 0
        users = np.concatenate([self.train.pairs()[0], np.nonzero(extra)[0]])
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
            "evaluated_users": int((self.test[:, 0] >= 0).sum()),
            "train_only_users": int((self.test[:, 0] < 0).sum()),
        }


def leave_one_out(
    interactions: Interactions,
    *,
    seed: int,
    n_negatives: int = 99,
    holdout: Holdout = "temporal",
) -> Split:
    """Hold out each evaluated user's last item for test and the one before it for
    validation, in the ``holdout`` order (see the module docstring)."""
    return _split(interactions, seed=seed, n_negatives=n_negatives, holdout=holdout)


def ratio_split(
    interactions: Interactions,
    *,
    test_ratio: float,
    seed: int,
    n_negatives: int = 99,
    holdout: Holdout = "temporal",
) -> Split:
    """Hold out each evaluated user's last ``ceil(test_ratio * n)`` items for test and as
    many before them for validation, in the ``holdout`` order, capped so that one item
    trains (see the module docstring). Its random draws are leave-one-out's."""
    if not 0 < test_ratio < 0.5:
        raise ValueError(f"test_ratio must be above 0 and below 0.5, not {test_ratio!r}")
    return _split(
        interactions, seed=seed, n_negatives=n_negatives, holdout=holdout, test_ratio=test_ratio
    )


def _held_per_user(counts: np.ndarray, test_ratio: float | None) -> np.ndarray:
    """How many items each user holds out for test (and as many for validation): 0 under
    three interactions, else 1 (leave-one-out) or the ratio's share, capped."""
    if test_ratio is None:
        return (counts >= 3).astype(np.int64)
    ratio = Fraction(str(test_ratio))  # the decimal as written: 0.1 * 30 is 3, not 3.0000…4
    sizes = np.unique(counts)
    held = np.array([min(math.ceil(ratio * int(n)), (int(n) - 1) // 2) for n in sizes], np.int64)
    return np.where(counts >= 3, held[np.searchsorted(sizes, counts)], 0)


def _split(
    interactions: Interactions,
    *,
    seed: int,
    n_negatives: int,
    holdout: Holdout,
    test_ratio: float | None = None,
) -> Split:
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
    held_out = _held_per_user(counts, test_ratio)
    evaluated = held_out > 0
    # slot j of a user's test row is position ends - m + j, of its validation row ends - 2m + j
    slots = np.arange(max(1, int(held_out.max(initial=0))))
    in_row = slots[None, :] < held_out[:, None]
    test_at = (ends - held_out)[:, None] + slots
    valid_at = test_at - held_out[:, None]
    test = np.full(in_row.shape, -1, np.int64)
    valid = np.full(in_row.shape, -1, np.int64)
    test[in_row] = items[test_at[in_row]]
    valid[in_row] = items[valid_at[in_row]]
    held = np.zeros(n, dtype=bool)
    held[test_at[in_row]] = True
    held[valid_at[in_row]] = True
    contexts = valid_context = test_context = timestamps = None
    if interactions.timestamp is not None:
        timestamps = np.asarray(interactions.timestamp[order], np.float64)
        contexts = timestamp_contexts(interactions.timestamp[order])
        valid_context = np.tile(np.array(UNKNOWN_CONTEXT, np.int64), (interactions.n_users, 1))
        test_context = valid_context.copy()
        test_context[evaluated] = contexts[test_at[evaluated, 0]]
        valid_context[evaluated] = contexts[valid_at[evaluated, 0]]
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
