"""Research harness: data sets, the evaluation protocol, baselines, the federated
simulation runner, reports and the ``stamen`` command line. May import every layer."""

from stamen.simulation.baselines import (
    mf_scorer,
    popularity_scorer,
    shared_model_scorer,
    train_centralised_mf,
)
from stamen.simulation.config import CentralisedSettings, SimulationConfig, load_config
from stamen.simulation.evaluate import Scorer, evaluate
from stamen.simulation.runner import FederatedResult, run_federated
from stamen.simulation.split import Split, leave_one_out, sample_negatives

__all__ = [
    "CentralisedSettings",
    "FederatedResult",
    "Scorer",
    "SimulationConfig",
    "Split",
    "evaluate",
    "leave_one_out",
    "load_config",
    "mf_scorer",
    "popularity_scorer",
    "run_federated",
    "sample_negatives",
    "shared_model_scorer",
    "train_centralised_mf",
]
