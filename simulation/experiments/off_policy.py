"""Off-policy evaluation in simulation: impression logs drawn by the response simulator under
a logging policy, with exact propensities, and every candidate's true value in the clear.

**Policies.** A :class:`Policy` is one of the simulator's variants
(``stamen.simulation.experiments.response.variant_lists``): a base list (``"popular"`` or
``"taste"``) with ε-greedy exploration. Its draw, for person ``i`` and slot ``j`` with base
item ``L_j``: with probability ``ε`` a uniformly random item of all ``n`` items replaces
``L_j``, unless that item is one the person has seen (then ``L_j`` stays). So the probability
that the policy shows item ``x`` (never a seen one) in slot ``j`` is exactly
(:func:`slot_probability`)::

    π(x, j) = (1 − ε + ε (S_i + 1) / n)   if x = L_j
              ε / n                        otherwise        (S_i: distinct items seen)

Every unseen item has a positive probability under any ``ε > 0``, so a logging policy with
exploration covers every candidate (each candidate shows unseen items only).

**Logs** (:func:`logged_sums`). As in the A/B simulator, a person draws the policy's list once
per evaluation (:func:`explore`, the same draw as ``variant_lists``) and sees it in each of
``s ~ Poisson(λ)`` sessions; each slot is engaged with, independently per session, with the
response model's probability (``variant_response``: ``min(1, base + p0 / log2(j + 1))`` for an
item of the person's future, ``base`` otherwise) — ``true_means``' engagement. A person's slot
groups are their ``k`` positions, each shown ``s`` times; the device's own functions
(``stamen.client.device.off_policy``) clip them and the sums over people are what a secure sum
releases before noise. Each repetition draws fresh lists, sessions and rewards.

**Truth** (:func:`true_value`). With the per-person slot clip ``L`` (a person's slots count
``min(k s, L)`` times, their average kept), the estimators target the policy's value per slot
``V = Σ_i w_i Σ_j q_ij / (k Σ_i w_i)``, ``w_i = E[min(k s_i, L)]`` (exact, from the Poisson
pmf), ``q_ij`` the slot's engagement probability in expectation over the policy's draw::

    q_ij = π(L_j, j) · P(engage L_j at j)
           + (ε / n) · [base · (U_i − 1) + (h_j − base) · (F_i − f_ij)]

(``U_i``: unseen items, ``F_i``: unseen future items, ``f_ij = 1`` when ``L_j`` is one of them,
``h_j = min(1, base + p0 / log2(j + 1))``). This is a per-slot value: an A/B test's
``engagement`` metric (``true_means``) is the mean over exposed people of their per-impression
rate, a slightly different weighting of the same slots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats

from stamen.client.device.off_policy import OffPolicyBounds, first_moments, summed_contributions
from stamen.privacy.dp.user import UserDP
from stamen.server.off_policy_stats import off_policy_mechanism
from stamen.simulation.experiments.batched import Released
from stamen.simulation.experiments.response import (
    Population,
    ResponseModel,
    variant_lists,
)

__all__ = [
    "Policy",
    "PolicyLists",
    "explore",
    "logged_sums",
    "policy_lists",
    "release",
    "slot_probability",
    "true_value",
]


@dataclass(frozen=True)
class Policy:
    """An ε-greedy policy of the simulator: its base list and its exploration rate."""

    base: Literal["popular", "taste"] = "popular"
    explore: float = 0.0

    def __post_init__(self) -> None:
        if self.base not in ("popular", "taste"):
            raise ValueError(f"base must be 'popular' or 'taste' (got {self.base!r})")
        if not 0 <= self.explore <= 1:
            raise ValueError(f"explore must lie in [0, 1] (got {self.explore})")

    @property
    def overrides(self) -> dict[str, Any]:
        """The pipeline settings an A/B arm running this policy overrides."""
        return {"explore": self.explore}

    @property
    def name(self) -> str:
        """A short name: ``popular+explore0.1``."""
        return f"{self.base}+explore{self.explore:g}"


@dataclass(frozen=True)
class PolicyLists:
    """A policy's base lists over a population (shape ``(people, k)``), whether each base
    item is in its person's future, each person's count of distinct seen items and of unseen
    future items, and the sorted keys ``person · n + item`` of seen and future items."""

    policy: Policy
    base: np.ndarray
    base_hit: np.ndarray
    seen_count: np.ndarray
    fresh_future: np.ndarray
    seen_keys: np.ndarray
    future_keys: np.ndarray
    n_items: int


def _keys(population: Population, indptr: np.ndarray, items: np.ndarray) -> np.ndarray:
    rows = np.repeat(np.arange(population.size, dtype=np.int64), np.diff(indptr))
    return np.unique(rows * population.n_items + items)


def _member(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    found = np.minimum(np.searchsorted(keys, query), max(len(keys) - 1, 0))
    return (keys[found] == query) if len(keys) else np.zeros(query.shape, bool)


def policy_lists(population: Population, policy: Policy, *, k: int = 10) -> PolicyLists:
    """The base lists of ``policy`` (``variant_lists`` without exploration) and the counts
    its probabilities and truth need.

    Raises:
        ValueError: a person has fewer than ``k`` unseen items.
    """
    base = variant_lists(population, {}, base=policy.base, k=k)
    if np.any(base < 0):
        raise ValueError(f"a person has fewer than k = {k} unseen items")
    n = population.n_items
    seen = _keys(population, population.seen_indptr, population.seen_items)
    future = _keys(population, population.future_indptr, population.future_items)
    fresh = future[~_member(seen, future)]
    rows = np.arange(population.size, dtype=np.int64)[:, None]
    return PolicyLists(
        policy=policy,
        base=base,
        base_hit=_member(future, rows * n + base),
        seen_count=np.bincount(seen // n, minlength=population.size),
        fresh_future=np.bincount(fresh // n, minlength=population.size),
        seen_keys=seen,
        future_keys=future,
        n_items=n,
    )


def explore(lists: PolicyLists, rng: np.random.Generator) -> np.ndarray:
    """One ε-greedy draw of every person's list (``variant_lists``' draw: the same for the
    same generator state), shape ``(people, k)``."""
    base = lists.base
    swap = rng.random(base.shape) < lists.policy.explore
    random_items = rng.integers(0, lists.n_items, base.shape)
    people, slots = np.nonzero(swap)
    picked = random_items[people, slots]
    seen = _member(lists.seen_keys, people.astype(np.int64) * lists.n_items + picked)
    out = base.copy()
    out[people, slots] = np.where(seen, base[people, slots], picked)
    return out


def slot_probability(lists: PolicyLists, items: np.ndarray) -> np.ndarray:
    """The probability that the policy shows each of ``items`` (shape ``(people, k)``, items
    the person has not seen) in its slot (module docstring)."""
    eps, n = lists.policy.explore, lists.n_items
    own = 1 - eps + eps * (lists.seen_count[:, None] + 1) / n
    return np.where(np.asarray(items) == lists.base, own, eps / n)


def _position_hit(k: int, model: ResponseModel) -> np.ndarray:
    return np.minimum(1.0, model.base + model.p0 / np.log2(np.arange(1, k + 1) + 1))


def _kept_slots(population: Population, k: int, max_slots: int) -> np.ndarray:
    """``E[min(k s, L)]`` per person, ``s ~ Poisson(λ)``."""
    cutoff = -(-max_slots // k)  # sessions from which k s ≥ L
    s = np.arange(cutoff)
    pmf = stats.poisson.pmf(s[None, :], population.activity[:, None])
    tail = stats.poisson.sf(cutoff - 1, population.activity)
    return pmf @ (k * s) + max_slots * tail


def true_value(
    population: Population, lists: PolicyLists, model: ResponseModel, bounds: OffPolicyBounds
) -> float:
    """The policy's true value per slot under the slot clip (module docstring)."""
    k = lists.base.shape[1]
    eps, n = lists.policy.explore, lists.n_items
    hit = _position_hit(k, model)
    own_p = np.where(lists.base_hit, hit, model.base)
    unseen = n - lists.seen_count[:, None]
    others = model.base * (unseen - 1) + (hit - model.base) * (
        lists.fresh_future[:, None] - lists.base_hit
    )
    q = slot_probability(lists, lists.base) * own_p + eps / n * others
    weight = _kept_slots(population, k, bounds.max_slots)
    return float(weight @ q.sum(axis=1) / (k * weight.sum()))


def logged_sums(
    population: Population,
    logging: PolicyLists,
    candidates: list[PolicyLists],
    *,
    model: ResponseModel,
    bounds: OffPolicyBounds,
    repetitions: int,
    seed: int,
) -> np.ndarray:
    """The noise-free sums of ``repetitions`` evaluations (module docstring), shape
    ``(repetitions, width)``: each a fresh log under ``logging``, the candidates'
    probabilities of its slots."""
    if not candidates:
        raise ValueError("need at least one candidate")
    rng = np.random.default_rng([seed, 28, 3])
    k = logging.base.shape[1]
    hit_p = _position_hit(k, model)
    rows = np.arange(population.size, dtype=np.int64)[:, None]
    out = []
    for _ in range(repetitions):
        items = explore(logging, rng)
        moved = items != logging.base
        hit = logging.base_hit.copy()
        hit[moved] = _member(logging.future_keys, (rows * logging.n_items + items)[moved])
        slot_p = np.where(hit, hit_p, model.base)
        sessions = rng.poisson(population.activity)
        shown = np.broadcast_to(sessions[:, None], items.shape)
        engaged = rng.binomial(shown, slot_p)
        target = np.stack([slot_probability(c, items) for c in candidates], axis=-1)
        z = first_moments(engaged, shown, slot_probability(logging, items), target, bounds=bounds)
        out.append(summed_contributions(z))
    return np.array(out)


def release(
    clear: np.ndarray, *, privacy: UserDP, population: int, candidates: int, seed: int
) -> Released:
    """Release every repetition's sums through the evaluation's mechanism
    (``off_policy_mechanism``; ``batched.release``'s steps with this layout's sensitivity):
    one release per evaluation."""
    mechanism = off_policy_mechanism(
        privacy, population=population, candidates=candidates, seed=seed
    )
    if mechanism is None:
        return Released(clear.copy(), 0.0, {"epsilon": float("inf"), "mode": "off"})
    total = clear
    if mechanism.mode == "distributed":
        shares = mechanism.share_std(population) * np.sqrt(population)
        total = clear + mechanism.streams.noise_shares(0).normal(0.0, shares, clear.shape)
    noisy = mechanism.release_sum(total, rnd=0)
    report = mechanism.report()
    report["epsilon"] = mechanism.accountant.epsilon
    return Released(noisy, mechanism.sigma, report)
