"""User-level DP-FedAvg accounting with Opacus' accountants.

In DP-FedAvg each round samples devices with probability ``sampling_rate`` (q), clips each
device's update to ``clip_norm`` and adds Gaussian noise of standard deviation
``noise_multiplier * clip_norm`` (z · C) to the sum. One round is one step of the
subsampled Gaussian mechanism with respect to a *user*, so Opacus' accountants apply
unchanged through their ``history=[(z, q, rounds)]`` form; no privacy math lives here.

Example (FLOWER-NOTES): q = 0.01, 500 rounds, z = 1.0 spend ε ≈ 1.65 at δ = 1e-5.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from stamen.errors import BudgetExceededError

__all__ = ["ACCOUNTANTS", "AccountantName", "DPSettings", "PrivacyAccountant", "noise_for_target"]

if TYPE_CHECKING:
    from opacus.accountants import IAccountant


class _Accountants(Mapping[str, "type[IAccountant]"]):
    """Name → Opacus accountant class; Opacus (two seconds of imports) is loaded on the
    first lookup, so that settings validate without it."""

    _classes = MappingProxyType({"prv": "PRVAccountant", "rdp": "RDPAccountant"})

    def __getitem__(self, name: str) -> type[IAccountant]:
        from opacus import accountants

        return getattr(accountants, self._classes[name])  # type: ignore[no-any-return]

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)


ACCOUNTANTS: Mapping[str, type[IAccountant]] = _Accountants()
"""Accountant registry: name (Opacus' mechanism name) → Opacus accountant class."""

_MAX_ROUNDS = 10**12


def _known_accountant(name: str) -> str:
    if name not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {name!r}; known: {', '.join(ACCOUNTANTS)}")
    return name


#: The name of an accountant in :data:`ACCOUNTANTS`, checked when a settings model is built.
AccountantName = Annotated[str, AfterValidator(_known_accountant)]


class DPSettings(BaseModel):
    """User-level differential-privacy settings of a federated run.

    ``noise_multiplier`` z (0 disables noise, and ε is then infinite), ``clip_norm`` C
    bounds each device's update, ``sampling_rate`` q is the chance a device takes part in
    a round, ``delta`` the δ that ε is reported at (well below 1 / number of users),
    ``target_epsilon`` an optional budget the run must not exceed, and ``accountant`` a
    name in :data:`ACCOUNTANTS`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    noise_multiplier: float = Field(1.0, ge=0, allow_inf_nan=False)
    clip_norm: float = Field(1.0, gt=0, allow_inf_nan=False)
    sampling_rate: float = Field(0.01, gt=0, le=1)
    delta: float = Field(1e-5, gt=0, lt=1)
    target_epsilon: float | None = Field(None, gt=0, allow_inf_nan=False)
    accountant: AccountantName = "rdp"


@lru_cache(maxsize=4096)
def _epsilon(
    accountant: str, noise_multiplier: float, sampling_rate: float, rounds: int, delta: float
) -> float:
    """ε spent by ``rounds`` rounds, from a fresh Opacus accountant (pure, so cached)."""
    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    opacus_accountant = ACCOUNTANTS[accountant]()
    opacus_accountant.history = [(noise_multiplier, sampling_rate, rounds)]
    with _edge_orders_are_upper_bounds():
        return float(opacus_accountant.get_epsilon(delta=delta))


@contextmanager
def _edge_orders_are_upper_bounds() -> Iterator[None]:
    """Silence Opacus' "Optimal order is the largest (smallest) alpha" warning. The RDP
    conversion at the edge of its default orders is still a valid upper bound on ε (a
    looser one than more orders could give), and keeping Opacus' default orders keeps every
    recorded ε and calibrated noise reproducible; the warning only told the reader of a
    console (`stamen simulate` printed it) something the accounting does not need."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", "Optimal order is the (largest|smallest) alpha", UserWarning
        )
        yield


class PrivacyAccountant:
    """Tracks the (ε, δ) a run has spent, one DP-FedAvg round at a time.

    ``rounds`` restores a count recorded earlier (for a resumed run). The accountant keeps
    only that count: every round of a run uses the same ``settings``.
    """

    def __init__(self, settings: DPSettings, *, rounds: int = 0) -> None:
        if rounds < 0:
            raise ValueError(f"rounds must be non-negative (got {rounds})")
        self.settings = settings
        self._rounds = int(rounds)

    def __repr__(self) -> str:
        return f"PrivacyAccountant(rounds={self._rounds}, epsilon={self.epsilon:.4g})"

    @property
    def rounds(self) -> int:
        """Number of rounds recorded so far."""
        return self._rounds

    @property
    def epsilon(self) -> float:
        """ε spent so far at ``settings.delta`` (0 before any round, inf without noise)."""
        return self.epsilon_after(self._rounds)

    def epsilon_after(self, rounds: int) -> float:
        """ε that a run of ``rounds`` rounds in total would spend under these settings."""
        if rounds < 0:
            raise ValueError(f"rounds must be non-negative (got {rounds})")
        s = self.settings
        return _epsilon(s.accountant, s.noise_multiplier, s.sampling_rate, int(rounds), s.delta)

    def _target(self, target_epsilon: float | None) -> float:
        target = self.settings.target_epsilon if target_epsilon is None else target_epsilon
        if target is None:
            raise ValueError("no target_epsilon given and none set in the DP settings")
        if not target >= 0:
            raise ValueError(f"target_epsilon must be non-negative (got {target})")
        return float(target)

    def would_exceed(self, target_epsilon: float | None = None, *, rounds: int = 1) -> bool:
        """Whether recording ``rounds`` more rounds would push ε above the target.

        ``target_epsilon`` defaults to ``settings.target_epsilon``.
        """
        return self.epsilon_after(self._rounds + rounds) > self._target(target_epsilon)

    def rounds_within(self, target_epsilon: float | None = None) -> int:
        """Largest total number of rounds whose ε stays within the target (≤ it).

        Counts from the start of the run, not from the rounds already recorded;
        ``target_epsilon`` defaults to ``settings.target_epsilon``. Capped at 10**12.
        """
        target = self._target(target_epsilon)
        if self.settings.noise_multiplier == 0:
            return 0
        low, high = 0, 1  # invariant: epsilon_after(low) <= target
        while self.epsilon_after(high) <= target:
            low = high
            if high >= _MAX_ROUNDS:
                return _MAX_ROUNDS
            high = min(2 * high, _MAX_ROUNDS)
        while high - low > 1:  # epsilon_after(high) > target
            middle = (low + high) // 2
            if self.epsilon_after(middle) <= target:
                low = middle
            else:
                high = middle
        return low

    def step(self, n: int = 1) -> None:
        """Record ``n`` rounds.

        Raises:
            BudgetExceededError: ``settings.target_epsilon`` is set and the ``n`` rounds
                would exceed it; nothing is recorded then.
        """
        if n < 0:
            raise ValueError(f"cannot record a negative number of rounds (got {n})")
        target = self.settings.target_epsilon
        if target is not None and self.would_exceed(target, rounds=n):
            raise BudgetExceededError(
                f"{n} more round(s) after {self._rounds} would spend "
                f"ε = {self.epsilon_after(self._rounds + n):.4g} > target {target:.4g} "
                f"(δ = {self.settings.delta:g})"
            )
        self._rounds += int(n)

    def report(self) -> dict[str, Any]:
        """The privacy figures every run reports: ε, δ, z, C, q, rounds and accountant."""
        s = self.settings
        return {
            "epsilon": self.epsilon,
            "delta": s.delta,
            "noise_multiplier": s.noise_multiplier,
            "clip_norm": s.clip_norm,
            "sampling_rate": s.sampling_rate,
            "rounds": self._rounds,
            "target_epsilon": s.target_epsilon,
            "accountant": s.accountant,
        }


def noise_for_target(
    *,
    target_epsilon: float,
    delta: float,
    sampling_rate: float,
    rounds: int,
    accountant: str = "rdp",
    epsilon_tolerance: float = 0.01,
) -> float:
    """Smallest noise multiplier (to ``epsilon_tolerance``) that keeps ``rounds`` within ε.

    Delegates to Opacus' ``get_noise_multiplier``: the ε of the returned z is at most
    ``target_epsilon`` and within ``epsilon_tolerance`` of it.
    """
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {accountant!r}; known: {', '.join(ACCOUNTANTS)}")
    from opacus.accountants.utils import get_noise_multiplier

    if rounds < 1:
        raise ValueError(f"rounds must be at least 1 (got {rounds})")
    with _edge_orders_are_upper_bounds():
        noise = get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sampling_rate,
            steps=rounds,
            accountant=accountant,
            epsilon_tolerance=epsilon_tolerance,
        )
    return float(noise)
