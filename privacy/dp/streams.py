"""A run's named random streams: every draw a round makes (its cohort, the server's
noise, the simulated devices' noise shares) comes from a generator seeded by the run's
seed, the round and the stream's name, so one seed reproduces a run bit for bit and no two
draws share a stream.

    stream                      seed sequence
    cohort(rnd, purpose)        [seed, rnd, purpose]
    central_noise(rnd, TRAIN)   [seed, rnd, 7]
    central_noise(rnd, query)   [seed, rnd, purpose, 7]
    noise_shares(rnd)           [seed, rnd, 2]   (the simulation's stand-in for the
                                                  devices' own noise shares)

A :class:`Purpose` separates the rounds' kinds: training, the evaluation query, the
trending query and an experiment's measurement each draw their own cohorts and noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

__all__ = ["Purpose", "Streams"]

_CENTRAL_NOISE = 7
_NOISE_SHARES = 2


class Purpose(IntEnum):
    """What a round's draw is for: each purpose has cohorts and noise of its own."""

    TRAINING = 0
    EVALUATION = 1
    TRENDING = 2
    EXPERIMENT = 3


@dataclass(frozen=True)
class Streams:
    """The random streams of a run seeded with ``seed`` (module docstring)."""

    seed: int

    def cohort(self, rnd: int, purpose: Purpose) -> np.random.Generator:
        """The generator of round ``rnd``'s cohort draw for ``purpose``."""
        return np.random.default_rng([self.seed, rnd, int(purpose)])

    def central_noise(self, rnd: int, purpose: Purpose) -> np.random.Generator:
        """The generator of the noise the server adds to round ``rnd``'s sum."""
        if purpose is Purpose.TRAINING:
            return np.random.default_rng([self.seed, rnd, _CENTRAL_NOISE])
        return np.random.default_rng([self.seed, rnd, int(purpose), _CENTRAL_NOISE])

    def noise_shares(self, rnd: int) -> np.random.Generator:
        """The generator a simulation draws round ``rnd``'s devices' noise shares from
        (on a real device each share comes from the device's own randomness)."""
        return np.random.default_rng([self.seed, rnd, _NOISE_SHARES])
