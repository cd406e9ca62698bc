"""The training strategy whose measurements (A/B experiments, off-policy evaluation) the
server tests drive directly, without Flower."""

from __future__ import annotations

import numpy as np

from stamen.privacy import SecAggSettings
from stamen.server.analytics import ExperimentQuerySettings
from stamen.server.settings import ServerSettings
from stamen.server.strategy import FederatedAveraging


def measuring_strategy(
    population: int, arms: dict[str, tuple[str, ...]], *, rounds: int, **experiments: object
) -> FederatedAveraging:
    """FedAvg of a (10, 2) model of zeros over ``population`` devices for ``rounds`` rounds,
    3 devices a round, no evaluation rounds, SecAgg+ of 3 shares (threshold 2), measuring
    the experiments ``arms`` names (experiment id: its arms) with
    ``ExperimentQuerySettings(**experiments)``."""
    settings = ServerSettings(
        rounds=rounds,
        clients_per_round=3,
        eval_every=0,
        secagg=SecAggSettings(num_shares=3, reconstruction_threshold=2),
        analytics={"experiments": ExperimentQuerySettings(**experiments)},
    )
    strategy = FederatedAveraging(
        settings, initial=[np.zeros((10, 2), np.float32)], population=population
    )
    strategy.measure_experiments(arms)
    return strategy
