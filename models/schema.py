"""The canonical data tables every loader returns and every model consumes.

An ``Interactions`` table holds one row per (user, item) event as parallel numpy arrays:
dense integer indices ``user`` in ``[0, n_users)`` and ``item`` in ``[0, n_items)``, a
``value`` (a rating, a play count, 1.0 for plain implicit events) and a ``timestamp`` in
seconds since the epoch (or ``None`` for data sets without time, such as HetRec
Last.fm-2K). ``user_ids`` and ``item_ids`` map the dense indices back to the raw ids of
the source files. A ``Catalog`` describes the items in the same index order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stamen.errors import DataError

__all__ = ["Catalog", "Dataset", "Interactions", "UserAttributes"]


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    array.flags.writeable = False
    return array


@dataclass(frozen=True)
class Interactions:
    """One row per interaction; validated on construction (see module docstring)."""

    user: np.ndarray
    item: np.ndarray
    value: np.ndarray
    timestamp: np.ndarray | None
    user_ids: np.ndarray
    item_ids: np.ndarray
    source: str = "<memory>"

    def __post_init__(self) -> None:
        n = len(self.user)
        columns = {"user": self.user, "item": self.item, "value": self.value}
        if self.timestamp is not None:
            columns["timestamp"] = self.timestamp
        for name, column in columns.items():
            if column.ndim != 1 or len(column) != n:
                raise DataError(
                    f"{self.source}: column {name!r} has shape {column.shape}, expected ({n},)"
                )
        object.__setattr__(self, "user", _frozen(self.user.astype(np.int64, copy=False)))
        object.__setattr__(self, "item", _frozen(self.item.astype(np.int64, copy=False)))
        object.__setattr__(self, "value", _frozen(self.value.astype(np.float32, copy=False)))
        if self.timestamp is not None:
            ts = self.timestamp.astype(np.int64, copy=False)
            object.__setattr__(self, "timestamp", _frozen(ts))
        object.__setattr__(self, "user_ids", _frozen(np.asarray(self.user_ids)))
        object.__setattr__(self, "item_ids", _frozen(np.asarray(self.item_ids)))
        problems = self.validate()
        if problems:
            raise DataError(f"{self.source}: " + "; ".join(problems))

    def validate(self) -> list[str]:
        """Return every problem found (empty when the table is sound)."""
        problems: list[str] = []
        if len(self.user) and (self.user.min() < 0 or self.user.max() >= self.n_users):
            problems.append(f"user index outside [0, {self.n_users})")
        if len(self.item) and (self.item.min() < 0 or self.item.max() >= self.n_items):
            problems.append(f"item index outside [0, {self.n_items})")
        if not np.all(np.isfinite(self.value)):
            problems.append(f"{int((~np.isfinite(self.value)).sum())} non-finite values")
        if len(self.user):
            key = self.user * max(self.n_items, 1) + self.item
            unique, counts = np.unique(key, return_counts=True)
            if (counts > 1).any():
                first = unique[counts > 1][0]
                u, i = divmod(int(first), max(self.n_items, 1))
                problems.append(
                    f"{int((counts > 1).sum())} duplicate (user, item) pairs, e.g. user "
                    f"{self.user_ids[u]!r} item {self.item_ids[i]!r}"
                )
        return problems

    @property
    def n_users(self) -> int:
        """Number of users (rows of the user index)."""
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        """Number of items in the catalogue (not only those interacted with)."""
        return len(self.item_ids)

    def __len__(self) -> int:
        return len(self.user)

    @classmethod
    def from_raw(
        cls,
        raw_users: np.ndarray,
        raw_items: np.ndarray,
        values: np.ndarray,
        timestamps: np.ndarray | None,
        *,
        item_ids: np.ndarray | None = None,
        source: str = "<memory>",
    ) -> Interactions:
        """Index raw ids densely. With ``item_ids`` the catalogue fixes the item order and
        an interaction with an item outside it is an error; without, items are indexed in
        sorted order of their raw ids. Users are always indexed in sorted raw-id order."""
        user_ids, user = np.unique(np.asarray(raw_users), return_inverse=True)
        if item_ids is None:
            item_ids, item = np.unique(np.asarray(raw_items), return_inverse=True)
        else:
            item_ids = np.asarray(item_ids)
            order = np.argsort(item_ids, kind="stable")
            pos = np.searchsorted(item_ids, raw_items, sorter=order)
            pos = np.minimum(pos, len(item_ids) - 1)
            item = order[pos]
            unknown = item_ids[item] != raw_items
            if unknown.any():
                raise DataError(
                    f"{source}: {int(unknown.sum())} interactions name items missing from the "
                    f"catalogue, e.g. {raw_items[np.argmax(unknown)]!r}"
                )
        return cls(
            user=user.astype(np.int64),
            item=item.astype(np.int64),
            value=np.asarray(values, dtype=np.float32),
            timestamp=None if timestamps is None else np.asarray(timestamps, dtype=np.int64),
            user_ids=user_ids,
            item_ids=item_ids,
            source=source,
        )


@dataclass(frozen=True)
class Catalog:
    """Item metadata in item-index order: titles, genre tuples, release year (0 when
    unknown) and the time of the item's first interaction (``None`` without timestamps)."""

    item_ids: np.ndarray
    titles: tuple[str, ...]
    genres: tuple[tuple[str, ...], ...]
    year: np.ndarray
    first_seen: np.ndarray | None = None
    genre_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        if not (len(self.titles) == len(self.genres) == len(self.year) == n):
            raise DataError("catalogue columns differ in length")
        if self.first_seen is not None and len(self.first_seen) != n:
            raise DataError("catalogue first_seen differs in length from item_ids")
        if not self.genre_names:
            names = sorted({g for gs in self.genres for g in gs})
            object.__setattr__(self, "genre_names", tuple(names))

    def __len__(self) -> int:
        return len(self.item_ids)

    def genre_matrix(self) -> np.ndarray:
        """Multi-hot ``(n_items, n_genres)`` float32 matrix in ``genre_names`` order."""
        index = {g: j for j, g in enumerate(self.genre_names)}
        out = np.zeros((len(self), len(self.genre_names)), dtype=np.float32)
        for i, gs in enumerate(self.genres):
            for g in gs:
                out[i, index[g]] = 1.0
        return out


@dataclass(frozen=True)
class UserAttributes:
    """Per-user attributes (``values`` ``(n_users, len(names))``, rows in the interaction
    table's user order), e.g. MovieLens-100K's one-hot age, gender and occupation. In a
    deployment they live on each person's device only."""

    names: tuple[str, ...]
    values: np.ndarray


@dataclass(frozen=True)
class Dataset:
    """A named interaction table with its item catalogue (and user attributes, where the
    data set has them)."""

    name: str
    interactions: Interactions
    catalog: Catalog
    users: UserAttributes | None = None

    def __post_init__(self) -> None:
        if self.users is not None and self.users.values.shape != (
            self.interactions.n_users,
            len(self.users.names),
        ):
            raise DataError(
                f"{self.name}: user attributes of shape {self.users.values.shape} for "
                f"{self.interactions.n_users} users and {len(self.users.names)} attributes"
            )
        if len(self.catalog) != self.interactions.n_items:
            raise DataError(
                f"{self.name}: catalogue has {len(self.catalog)} items but the interaction "
                f"table indexes {self.interactions.n_items}"
            )

    @property
    def has_timestamps(self) -> bool:
        """Whether interactions carry times (else the split holds out at random)."""
        return self.interactions.timestamp is not None
