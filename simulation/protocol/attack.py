"""Item-set inference: what an honest-but-curious server learns from a device's update.

A device uploads the dense delta of the shared item side, ``[d_item_factors (n_items, dim),
d_item_bias (n_items,)]`` (``stamen.models.mf.local``). Dense or not, its *values* give the
device's items away. A local epoch is one step on one user, and for the whole-catalogue
losses the gradient with respect to item ``i``'s row ``[q_i, b_i]`` is a per-item
coefficient times the same vector ``[u, 1]``: for ``ials`` ``2 c_i (s_i - y_i)`` (score
``s_i``, target ``y_i``, confidence ``c_i = 1 + alpha y_i``), for ``softmax``
``p_i - y_i / |S|``. The update is (up to the item-table L2 term) the rank-1 matrix
``g ⊗ [u, 1]``, and ``g_i`` is large and positive for the device's items (pulled towards
1) and near zero or negative for the rest. The attack scores every item and guesses the
``k`` best-scored items, or, without ``k``, the items above the largest gap in the sorted
scores (:func:`estimate_k`). Scores (registry :data:`SCORES`):

``bias``
    the item-bias delta ``d_b_i`` (signed);
``row_norm``
    ``||[d_q_i, d_b_i]||``, the row norm (unsigned, so it cannot tell "pulled up" from
    "pushed down", and the item-table L2 term adds to it);
``projection``
    the rows projected on the update's top right singular vector (the ``[u, 1]`` direction,
    found from the ``(dim+1)²`` Gram matrix), its sign fixed to agree with the bias
    delta: it uses all ``dim + 1`` coordinates of a row, not only the bias.

``benchmarks/attack.py`` measures all three; on ML-100K all three are exact on individual
round-1 updates (``ials`` and ``softmax``), and under noise ``bias`` holds up best.

Three views of a device's contribution are produced here, all with explicit seeded
randomness:

(a) :func:`device_updates`: its individual update (what the server gets without SecAgg+);
(b) :func:`cohort_aggregates`: the mean of its cohort's updates (all SecAgg+ reveals); the
    attack targets one member of the cohort;
(c) :func:`dp_views`: its update clipped to ``C`` plus Gaussian noise ``N(0, (z·C)²)`` per
    coordinate. This is what DP-FedAvg's noisy sum tells an attacker who already knows
    every *other* member's update (the adversary differential privacy is defined against),
    so it is the strongest DP view of the device; :func:`noise_multipliers` picks ``z``.

How good a guess is, and what "learns nothing" means (:func:`attack_metrics`):

* ``base_rate`` = ``|S| / n_items``, the precision of a uniformly random guess;
* ``popularity`` (:func:`popularity_scores`): the precision of guessing the ``k`` items most
  popular among the *other* users. Against an aggregate, the attacker's best guess is the
  cohort's popular items, which already beats ``base_rate`` without revealing anything
  specific to the target; popular items are the data-independent prior to compare with;
* ``counterfactual`` (:func:`sample_cohorts`): the same attack on the aggregate of the same
  cohort with the target replaced by a non-member; the difference is exactly what the
  target's presence adds (the neighbouring data sets of differential privacy).

The attacker is handed ``k = |S|``, the true number of items (generous to the attacker).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType

import numpy as np

from stamen.models.batches import UserItems
from stamen.models.mf.local import local_update
from stamen.models.mf.settings import LocalSettings
from stamen.privacy import clip_update, noise_for_target

__all__ = [
    "SCORES",
    "attack",
    "attack_metrics",
    "batch_attack_metrics",
    "cohort_aggregates",
    "device_updates",
    "dp_views",
    "estimate_k",
    "guess_items",
    "item_scores",
    "noise_multipliers",
    "popularity_scores",
    "sample_cohorts",
    "truth_mask",
]

Update = Sequence[np.ndarray]
ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _bias_score(factors: np.ndarray, bias: np.ndarray) -> np.ndarray:
    del factors
    return np.asarray(bias, np.float64)


def _row_norm_score(factors: np.ndarray, bias: np.ndarray) -> np.ndarray:
    factors = np.asarray(factors, np.float64)
    return np.sqrt(np.einsum("...nd,...nd->...n", factors, factors) + np.square(bias))


def _projection_score(factors: np.ndarray, bias: np.ndarray) -> np.ndarray:
    rows = np.concatenate([factors, np.asarray(bias)[..., None]], axis=-1).astype(np.float64)
    gram = np.swapaxes(rows, -1, -2) @ rows
    _, vectors = np.linalg.eigh(gram)  # ascending eigenvalues: the last is the top one
    scores = (rows @ vectors[..., -1:])[..., 0]
    sign = np.sign(np.einsum("...n,...n->...", scores, bias))
    return scores * np.where(sign == 0, 1.0, sign)[..., None]


SCORES: Mapping[str, ScoreFn] = MappingProxyType(
    {"bias": _bias_score, "projection": _projection_score, "row_norm": _row_norm_score}
)
"""Score registry: name → ``f(d_item_factors, d_item_bias) -> scores`` (see module doc)."""


def item_scores(update: Update, *, method: str = "bias") -> np.ndarray:
    """Score every item by how likely it is to be among the device's items.

    ``update`` is ``[d_item_factors, d_item_bias]`` of shapes ``(..., n_items, dim)`` and
    ``(..., n_items)``: one update or a stack of them. Returns ``(..., n_items)`` scores.
    """
    if method not in SCORES:
        raise ValueError(f"unknown score {method!r}; choose one of {sorted(SCORES)}")
    factors, bias = update
    if factors.shape[:-1] != bias.shape:
        raise ValueError(f"factor shape {factors.shape} does not match bias shape {bias.shape}")
    return SCORES[method](factors, bias)


def guess_items(
    scores: np.ndarray,
    *,
    k: int | np.ndarray | None = None,
    threshold: float | None = None,
) -> np.ndarray:
    """The guessed item sets as a boolean mask shaped like ``scores``.

    Exactly one rule: ``k`` (an int, or one per row of a stack) takes each row's ``k``
    best-scored items (ties broken by item index); ``threshold`` takes every item scored
    above it.
    """
    if (k is None) == (threshold is None):
        raise ValueError("give exactly one of k (top-k rule) or threshold (threshold rule)")
    scores = np.asarray(scores)
    if threshold is not None:
        return scores > threshold
    k_arr = np.asarray(k)
    if np.any(k_arr < 0) or np.any(k_arr > scores.shape[-1]):
        raise ValueError(f"k must lie in [0, {scores.shape[-1]}]")
    order = np.argsort(-scores, axis=-1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[-1]), axis=-1)
    return ranks < k_arr[..., None]


def estimate_k(scores: np.ndarray) -> np.ndarray:
    """The largest-gap rule: how many items to guess when ``k`` is unknown.

    Sorts each row's scores in descending order and cuts at the largest drop between two
    neighbours: ``k`` is the number of items above it. Returns ints shaped ``scores[..., 0]``.
    """
    ordered = -np.sort(-np.asarray(scores, np.float64), axis=-1)
    return np.argmax(ordered[..., :-1] - ordered[..., 1:], axis=-1) + 1


def attack(
    update: Update,
    *,
    k: int | None = None,
    threshold: float | None = None,
    method: str = "bias",
) -> np.ndarray:
    """Guess one device's items from one ``update``: the sorted guessed item indices.

    With neither ``k`` nor ``threshold`` the largest-gap rule (:func:`estimate_k`) picks k.
    """
    if update[1].ndim != 1:
        raise ValueError("attack takes one update; use item_scores and guess_items for a stack")
    scores = item_scores(update, method=method)
    if k is None and threshold is None:
        k = int(estimate_k(scores))
    mask = guess_items(scores, k=k, threshold=threshold)
    return np.flatnonzero(mask)


def attack_metrics(guess: np.ndarray, truth: np.ndarray, n_items: int) -> dict[str, float]:
    """Precision and recall of a guessed item set, and the base rate ``|truth| / n_items``.

    ``guess`` and ``truth`` are item indices. The base rate is the expected precision of a
    uniformly random guess. An empty guess has precision 0.
    """
    guess = np.unique(np.asarray(guess, np.int64))
    truth = np.unique(np.asarray(truth, np.int64))
    hits = len(np.intersect1d(guess, truth, assume_unique=True))
    return {
        "precision": hits / len(guess) if len(guess) else 0.0,
        "recall": hits / len(truth) if len(truth) else 0.0,
        "base_rate": len(truth) / n_items,
    }


def batch_attack_metrics(guess: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`attack_metrics` row by row for boolean ``(B, n_items)`` masks; arrays of ``B``."""
    hits = (guess & truth).sum(-1)
    n_guess, n_true = guess.sum(-1), truth.sum(-1)
    return {
        "precision": hits / np.maximum(n_guess, 1),
        "recall": hits / np.maximum(n_true, 1),
        "base_rate": n_true / truth.shape[-1],
    }


def truth_mask(train: UserItems, users: np.ndarray) -> np.ndarray:
    """Boolean ``(len(users), n_items)``: the training items of each of ``users``."""
    rows = train.select(np.asarray(users, np.int64))
    owners, items = rows.pairs()
    mask = np.zeros((rows.n_users, train.n_items), dtype=bool)
    mask[owners, items] = True
    return mask


def popularity_scores(train: UserItems, users: np.ndarray) -> np.ndarray:
    """Item popularity among all users but each of ``users``: ``(len(users), n_items)``.

    The top-``k`` of a row is the "guess the popular items" chance level for that user.
    """
    counts = np.bincount(train.items, minlength=train.n_items).astype(np.float64)
    return counts[None, :] - truth_mask(train, users)


# --- the three views ------------------------------------------------------------------


def device_updates(
    shared: list[np.ndarray],
    train: UserItems,
    users: Iterable[int],
    *,
    settings: LocalSettings,
    seed: int,
) -> list[np.ndarray]:
    """View (a): each user's individual update, stacked: ``[(B, n, dim), (B, n)]``.

    Each device runs ``local_update`` on its training items from ``shared`` with no stored
    user factor (its first round), drawing from ``np.random.default_rng([seed, user])``.
    """
    deltas = [
        local_update(
            shared,
            None,
            items=train.row(int(u)),
            settings=settings,
            rng=np.random.default_rng([seed, int(u)]),
        ).delta
        for u in users
    ]
    if not deltas:
        raise ValueError("no users given")
    return [np.stack([d[0] for d in deltas]), np.stack([d[1] for d in deltas])]


def sample_cohorts(
    n_users: int, targets: np.ndarray, size: int, *, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A random cohort of ``size`` users around each target, and its counterfactual twin.

    Returns ``(cohorts, counterfactual)``, both ``(len(targets), size)`` user indices.
    Column 0 of ``cohorts`` is the target, the rest are drawn without replacement from the
    other users; ``counterfactual`` is the same cohort with the target replaced by one more
    non-member.
    """
    targets = np.asarray(targets, np.int64)
    if not 2 <= size < n_users:
        raise ValueError(f"cohort size must lie in [2, {n_users - 1}] (got {size})")
    keys = rng.random((len(targets), n_users))
    keys[np.arange(len(targets)), targets] = -1.0  # the target sorts first
    order = np.argsort(keys, axis=1)[:, : size + 1]
    cohorts = order[:, :size]
    counterfactual = np.concatenate([order[:, 1:size], order[:, size:]], axis=1)
    return cohorts, counterfactual


def cohort_aggregates(
    updates: list[np.ndarray], cohorts: np.ndarray, *, reduce: str = "mean"
) -> list[np.ndarray]:
    """View (b): the mean (or sum) of each cohort's updates, ``[(T, n, dim), (T, n)]``.

    ``updates`` is a stack over all users (as from :func:`device_updates`, row = user) and
    ``cohorts`` ``(T, m)`` holds row indices. One matrix product over the stack.
    """
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum' (got {reduce!r})")
    n_users = updates[0].shape[0]
    weights = np.zeros((len(cohorts), n_users), dtype=np.float32)
    rows = np.repeat(np.arange(len(cohorts)), cohorts.shape[1])
    np.add.at(weights, (rows, cohorts.ravel()), 1.0)
    if reduce == "mean":
        weights /= cohorts.shape[1]
    return [
        (weights @ array.reshape(n_users, -1)).reshape(len(cohorts), *array.shape[1:])
        for array in updates
    ]


def noise_multipliers(
    epsilons: Iterable[float],
    *,
    n_users: int,
    cohort: int,
    rounds: int,
    delta: float | None = None,
    accountant: str = "rdp",
) -> dict[float, float]:
    """The DP-FedAvg noise multiplier z for each target ε (``inf`` → 0: clipping only).

    Devices are sampled with rate ``q = cohort / n_users`` for ``rounds`` rounds and the
    whole run must stay within (ε, δ), ``δ = 1 / n_users`` unless given; z comes from
    ``stamen.privacy.noise_for_target`` (Opacus' accountants). The attack sees a single
    round's release, so the more rounds the budget covers, the more noise each round holds.
    """
    delta = 1.0 / n_users if delta is None else delta
    q = cohort / n_users
    return {
        float(eps): 0.0
        if math.isinf(eps)
        else noise_for_target(
            target_epsilon=float(eps),
            delta=delta,
            sampling_rate=q,
            rounds=rounds,
            accountant=accountant,
        )
        for eps in epsilons
    }


def dp_views(
    updates: list[np.ndarray],
    *,
    clip_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """View (c): each update of a stack clipped to ``clip_norm`` (global L2 norm over both
    arrays, ``stamen.privacy.clip_update``) plus ``N(0, (noise_multiplier · clip_norm)²)``
    noise on every coordinate, drawn from ``rng``. Returns float32 arrays like ``updates``.
    """
    if noise_multiplier < 0:
        raise ValueError(f"noise_multiplier must be non-negative (got {noise_multiplier})")
    clipped = [clip_update([f, b], max_norm=clip_norm)[0] for f, b in zip(*updates, strict=True)]
    out = [np.stack([c[i] for c in clipped]).astype(np.float32) for i in range(2)]
    if noise_multiplier > 0:
        sigma = noise_multiplier * clip_norm
        for array in out:
            array += rng.normal(0.0, sigma, size=array.shape).astype(np.float32)
    return out
