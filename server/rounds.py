"""The round engine's plan, free of Flower: what each round of a run does before any
device computes anything, and after the sum arrives.

One :class:`RoundPlan` per run decides, round by round: whether the privacy budget allows
the round, which devices form its cohort (seeded over stable device ids: Poisson under
user-level DP, as the accountant assumes; fixed size otherwise), whether that cohort is
large enough to run (SecAgg+'s shares, the distributed noise shares), which rounds
evaluate, and how the mean of the updates is released (DP-FedAvg's fixed-denominator
estimate through the run's Gaussian-sum mechanism, ``stamen.privacy.dp.gaussian``).

The Flower strategies (``stamen.server.strategy``) and the batched simulation
(``stamen.simulation.engines.batched``) both follow it, so the two are the same arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stamen.privacy import GaussianSum, Purpose, Streams, secagg_range_for
from stamen.server.cohorts import sample_cohort
from stamen.server.settings import ServerSettings

__all__ = ["Draw", "RoundPlan", "check_distributed_range", "min_poisson_cohort"]

#: Why a round is skipped when the accountant's target ε would be exceeded.
BUDGET_SPENT = "privacy budget (target epsilon) reached"


def min_poisson_cohort(settings: ServerSettings, noise_multiplier: float) -> int:
    """Fewest devices a Poisson cohort may have for its round to run: SecAgg+'s
    ``num_shares``, and under distributed DP enough devices that each one's noise share
    (``z C / sqrt(n)``, so the shares sum to the full noise) stays inside SecAgg+'s
    clipping range. Smaller cohorts skip the round, which is charged to the accountant
    all the same."""
    floor = settings.secagg.num_shares if settings.secagg.enabled else 1
    if settings.secagg.enabled and settings.dp.noise_on_devices and noise_multiplier > 0:
        room = settings.secagg.clipping_range - settings.dp.clip_norm
        if room <= 0:
            raise ValueError("secagg.clipping_range must exceed dp.clip_norm")
        floor = max(floor, math.ceil((7 * noise_multiplier * settings.dp.clip_norm / room) ** 2))
    return floor


def check_distributed_range(settings: ServerSettings, noise_multiplier: float) -> None:
    """Refuse distributed DP whose noise shares SecAgg+ would clip (see
    ``secagg_range_for``)."""
    if not (settings.secagg.enabled and settings.dp.noise_on_devices):
        return
    needed = secagg_range_for(
        noise_multiplier=noise_multiplier,
        clip_norm=settings.dp.clip_norm,
        cohort=settings.clients_per_round,
    )
    if settings.secagg.clipping_range < needed:
        raise ValueError(
            f"secagg.clipping_range ({settings.secagg.clipping_range:g}) would clip the "
            f"devices' noise shares (z = {noise_multiplier:.3g}); set it to at least "
            f"{needed:.3g}"
        )


@dataclass(frozen=True)
class Draw:
    """A round's cohort (sorted device ids), or why the round is skipped."""

    cohort: np.ndarray
    skipped: str | None = None


class RoundPlan:
    """The plan of a run's training rounds (module docstring).

    Args:
        settings: the run's server settings.
        population: devices enrolled (``None``: unknown, only without user-level DP; each
            draw then takes the devices available as the population).
        rounds_done: rounds recorded before this run (a resume): the accountant continues
            from them.
    """

    def __init__(
        self, settings: ServerSettings, *, population: int | None, rounds_done: int = 0
    ) -> None:
        self.settings = settings
        self.population = population
        self.streams = Streams(settings.seed)
        self.mechanism: GaussianSum | None = None
        self.min_cohort = 1
        if settings.dp.enabled:
            if population is None:
                raise ValueError("differential privacy needs the population size")
            self.mechanism = settings.dp.mechanism(
                population=population,
                cohort=settings.clients_per_round,
                rounds=settings.rounds,
                seed=settings.seed,
                released=rounds_done,
            )
            check_distributed_range(settings, self.mechanism.noise_multiplier)
            self.min_cohort = min_poisson_cohort(settings, self.mechanism.noise_multiplier)

    def __repr__(self) -> str:
        return f"RoundPlan(rounds={self.settings.rounds}, mechanism={self.mechanism!r})"

    @property
    def expected_cohort(self) -> int:
        """Devices a training round expects: ``clients_per_round``, at most everyone."""
        cohort = self.settings.clients_per_round
        return cohort if self.population is None else min(cohort, self.population)

    def budget_spent(self) -> bool:
        """Whether one more round would exceed the target ε (skip it)."""
        if self.mechanism is None:
            return False
        accountant = self.mechanism.accountant
        return accountant.settings.target_epsilon is not None and accountant.would_exceed(rounds=1)

    def evaluates(self, rnd: int) -> bool:
        """Whether round ``rnd`` ends with federated evaluation: every ``eval_every``
        rounds and the last."""
        settings = self.settings
        if not settings.evaluate:
            return False
        every = settings.eval_every
        return rnd == settings.rounds or (every > 0 and rnd % every == 0)

    def sample(
        self,
        rnd: int,
        n: int,
        *,
        purpose: Purpose,
        poisson: bool,
        available: np.ndarray | None = None,
    ) -> np.ndarray:
        """Round ``rnd``'s seeded sample of ``n`` expected devices for ``purpose`` among
        the ``available`` ids (``None``: all): Poisson at rate ``n / population`` or of
        fixed size ``n``."""
        top = -1 if available is None or not len(available) else int(np.max(available))
        population = max(self.population or 0, top + 1)
        draw = {"rate": min(n / population, 1.0)} if poisson else {"size": n}
        return sample_cohort(
            population,
            seed=self.settings.seed,
            rnd=rnd,
            purpose=purpose,
            available=available,
            **draw,  # type: ignore[arg-type]
        )

    def draw(self, rnd: int, available: np.ndarray | None = None) -> Draw:
        """Round ``rnd``'s training cohort among the ``available`` ids (``None``: the whole
        population): Poisson under DP, where a cohort below :attr:`min_cohort` skips the
        round and is charged all the same."""
        private = self.mechanism is not None
        cohort = self.sample(
            rnd,
            self.settings.clients_per_round,
            purpose=Purpose.TRAINING,
            poisson=private,
            available=available,
        )
        if self.mechanism is not None and len(cohort) < self.min_cohort:
            self.mechanism.skip()
            return Draw(
                cohort,
                skipped=f"Poisson cohort of {len(cohort)} devices, below the "
                f"{self.min_cohort} this round needs (SecAgg+ shares, noise shares)",
            )
        return Draw(cohort)

    def noise_share_std(self, cohort: int) -> float:
        """The noise share each device of a cohort of ``cohort`` adds (0: none)."""
        return 0.0 if self.mechanism is None else self.mechanism.share_std(cohort)

    def release(
        self, mean: list[np.ndarray], *, rnd: int, devices: int, simulated_shares: bool = False
    ) -> list[np.ndarray]:
        """Round ``rnd``'s mean of ``devices`` updates as the server's optimiser receives
        it: unchanged without DP; under DP the mechanism's fixed-denominator release."""
        if self.mechanism is None:
            return mean
        return self.mechanism.release_mean(
            mean,
            rnd=rnd,
            devices=devices,
            expected=self.expected_cohort,
            simulated_shares=simulated_shares,
        )
