"""A synthetic interaction data set for scale tests and offline runs.

Users and items get latent factors; item popularity follows a Zipf-like power law.
Each user's items are drawn without replacement from
``softmax(user . item / TEMPERATURE + log popularity)`` with the Gumbel top-k trick: add
Gumbel noise to every logit and keep the k largest, for a whole chunk of users in one
array operation. The number of items per user is log-normal around the requested mean
(at least ``MIN_ITEMS``). Genres come from the item factors, ratings (1 to 5) from the
user-item affinity, and each user's timestamps increase in draw order, with some ties
to the second. Everything derives from one ``numpy.random.Generator`` seeded by
``seed``: the same arguments give the same data bit for bit.
"""

from __future__ import annotations

import numpy as np

from stamen.errors import ConfigError
from stamen.models.schema import Catalog, Dataset, Interactions
from stamen.simulation.datasets.movielens import ML100K_GENRES
from stamen.simulation.datasets.parsing import first_seen

__all__ = [
    "MIN_ITEMS",
    "TEMPERATURE",
    "generate_synthetic",
]

#: Every user has at least this many interactions.
MIN_ITEMS = 5
#: Softmax temperature of the user-item affinity (whose spread is about 1).
TEMPERATURE = 0.5

_COUNT_SIGMA = 0.75  # log-normal spread of the number of items per user
_CHUNK_CELLS = 1 << 20  # users x items scored at once (4 MiB of float32)
_EPOCH = 946_684_800  # 2000-01-01T00:00:00Z
_SPAN = 20 * 365 * 86_400  # users start within twenty years
_MEAN_GAP = 6 * 3_600  # mean seconds between a user's interactions
_TIE_RATE = 0.15  # share of interactions in the same second as the previous one
_GENRE_NAMES = ML100K_GENRES[1:]  # the 18 named MovieLens genres


def _check(
    n_users: int, n_items: int, dim: int, per_user: float, skew: float, n_genres: int
) -> None:
    problems = []
    if n_users < 1:
        problems.append(f"n_users must be at least 1, got {n_users}")
    if n_items < MIN_ITEMS:
        problems.append(f"n_items must be at least {MIN_ITEMS}, got {n_items}")
    if dim < 1:
        problems.append(f"dim must be at least 1, got {dim}")
    if not MIN_ITEMS <= per_user <= max(n_items, MIN_ITEMS):
        problems.append(
            f"interactions_per_user must lie in [{MIN_ITEMS}, n_items={n_items}], got {per_user}"
        )
    if not skew >= 0:
        problems.append(f"popularity_skew must be non-negative, got {skew}")
    if n_genres < 0:
        problems.append(f"n_genres must be non-negative, got {n_genres}")
    if problems:
        raise ConfigError("generate_synthetic: " + "; ".join(problems))


def _top_k(scores: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of the ``k[r]`` largest scores of each row ``r``, each row's in
    descending order. A cheap threshold from a column sample (an eighth of the columns,
    keeping about twice the needed count) narrows the candidates; rows it leaves short
    fall back to all columns, so the result is always the exact top k."""
    c, n = scores.shape
    sample = max(256, n // 8)
    if sample >= n or 4 * int(k.max()) >= n:
        order = np.argsort(-scores, axis=1, kind="stable")[:, : int(k.max())]
        keep = np.arange(order.shape[1]) < k[:, None]
        return np.repeat(np.arange(c), k), order[keep]
    head = np.sort(scores[:, :sample], axis=1)
    rank = np.minimum(sample, np.ceil(2 * k * sample / n).astype(np.int64) + 8)
    mask = scores >= head[np.arange(c), sample - rank][:, None]
    short = np.flatnonzero(np.count_nonzero(mask, axis=1) < k)
    mask[short] = True
    rows, cols = np.nonzero(mask)
    order = np.lexsort((-scores[rows, cols], rows))  # by row, then descending score
    rows, cols = rows[order], cols[order]
    starts = np.searchsorted(rows, np.arange(c))
    keep = np.arange(len(rows)) - starts[rows] < k[rows]
    return rows[keep], cols[keep]


def _draw(
    rng: np.random.Generator,
    users: np.ndarray,
    items: np.ndarray,
    log_pop: np.ndarray,
    counts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Gumbel top-k without replacement for all users, a chunk of users at a time, in
    preallocated buffers. Returns the user and item index of every draw, each user's
    draws together and in draw order."""
    n_users, n_items = len(users), len(items)
    chunk = min(n_users, max(1, _CHUNK_CELLS // n_items))
    items_t = np.ascontiguousarray(items.T)
    scores = np.empty((chunk, n_items), dtype=np.float32)
    noise = np.empty((chunk, n_items), dtype=np.float32)
    out_user, out_item = [], []
    for start in range(0, n_users, chunk):
        stop = min(start + chunk, n_users)
        s, g = scores[: stop - start], noise[: stop - start]
        # einsum's own loop, not BLAS: multithreaded sgemm on these thin (k = dim)
        # products is slow on busy machines, and one code path keeps results bit-exact.
        np.einsum("ud,dn->un", users[start:stop], items_t, out=s)
        s *= np.float32(1.0 / TEMPERATURE)
        s += log_pop
        rng.random(out=g, dtype=np.float32)
        with np.errstate(divide="ignore"):  # u = 0 gives Gumbel -inf: never drawn
            np.log(g, out=g)
            np.negative(g, out=g)
            np.log(g, out=g)
        s -= g  # s + Gumbel(0, 1), Gumbel = -log(-log u)
        rows, cols = _top_k(s, counts[start:stop])
        out_user.append(rows + start)
        out_item.append(cols)
    return np.concatenate(out_user), np.concatenate(out_item)


def _genres(
    rng: np.random.Generator, items: np.ndarray, n_genres: int
) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """Each item's best-matching genre prototype, plus up to two more that match it
    unusually well (top decile of all item-genre scores)."""
    names = tuple(
        _GENRE_NAMES[j] if j < len(_GENRE_NAMES) else f"Genre {j + 1}" for j in range(n_genres)
    )
    if n_genres == 0:
        return names, ((),) * len(items)
    prototypes = rng.standard_normal((n_genres, items.shape[1])).astype(np.float32)
    score = np.einsum("id,gd->ig", items, prototypes)
    ranked = np.argsort(-score, axis=1, kind="stable")[:, :3]
    strong = np.take_along_axis(score, ranked, axis=1) >= np.quantile(score, 0.9)
    strong[:, 0] = True
    genres = tuple(
        tuple(names[j] for j in sorted(row[mask])) for row, mask in zip(ranked, strong, strict=True)
    )
    return names, genres


def _timestamps(rng: np.random.Generator, user: np.ndarray, n_users: int) -> np.ndarray:
    """Per user a start time, then increasing times with exponential gaps, some zero."""
    start = _EPOCH + rng.integers(0, _SPAN, size=n_users)
    gaps = np.floor(rng.exponential(_MEAN_GAP, size=len(user))).astype(np.int64)
    gaps[rng.random(len(user)) < _TIE_RATE] = 0
    first = np.r_[True, user[1:] != user[:-1]]
    gaps[first] = 0
    total = np.cumsum(gaps)
    base = total[first][np.cumsum(first) - 1]
    return start[user] + total - base


def generate_synthetic(
    n_users: int,
    n_items: int,
    *,
    dim: int = 16,
    interactions_per_user: float = 40,
    popularity_skew: float = 1.0,
    n_genres: int = 18,
    seed: int = 0,
) -> Dataset:
    """Generate the data set ``"synthetic"`` with exactly ``n_users`` users and
    ``n_items`` catalogue items (see the module docstring for the model).

    ``interactions_per_user`` is the mean of a log-normal count (at least 5, at most half
    the catalogue, so every user leaves unseen items to rank and to sample negatives
    from); ``popularity_skew`` the exponent of item popularity, ``(rank + 1)**-s``;
    ``n_genres`` the number of genres (the MovieLens names first). Values are ratings
    1 to 5, timestamps seconds from 2000 on. Reproducible bit for bit from ``seed``.
    Raises ``ConfigError`` for out-of-range arguments.
    """
    _check(n_users, n_items, dim, interactions_per_user, popularity_skew, n_genres)
    rng = np.random.default_rng(seed)
    scale = dim**-0.25  # factor entries with this spread give affinities of spread ~1
    users = (rng.standard_normal((n_users, dim)) * scale).astype(np.float32)
    items = (rng.standard_normal((n_items, dim)) * scale).astype(np.float32)
    rank = rng.permutation(n_items)
    log_pop = (-popularity_skew * np.log1p(rank)).astype(np.float32)

    mu = np.log(interactions_per_user) - _COUNT_SIGMA**2 / 2
    counts = np.rint(rng.lognormal(mu, _COUNT_SIGMA, size=n_users)).astype(np.int64)
    counts = np.clip(counts, MIN_ITEMS, max(MIN_ITEMS, n_items // 2))

    genre_names, genres = _genres(rng, items, n_genres)
    year = np.clip(2024 - np.floor(rng.exponential(10.0, size=n_items)), 1920, 2024)

    user, item = _draw(rng, users, items, log_pop, counts)
    affinity = np.einsum("ij,ij->i", users[user], items[item])
    rating = np.clip(np.rint(3.0 + affinity + 0.5 * rng.standard_normal(len(user))), 1, 5)
    timestamp = _timestamps(rng, user, n_users)

    item_ids = np.arange(n_items, dtype=np.int64)
    interactions = Interactions.from_raw(
        user, item, rating, timestamp, item_ids=item_ids, source="synthetic"
    )
    catalog = Catalog(
        item_ids=item_ids,
        titles=tuple(f"Item {i}" for i in range(n_items)),
        genres=genres,
        year=year.astype(np.int64),
        first_seen=first_seen(interactions.item, interactions.timestamp, n_items),
        genre_names=genre_names,
    )
    return Dataset(name="synthetic", interactions=interactions, catalog=catalog)
