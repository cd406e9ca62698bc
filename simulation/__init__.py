"""Research harness: data sets, the evaluation protocol, baselines, the federated
simulation runner, reports and the ``stamen`` command line. May import every layer.

Everything loads on first use: the ``stamen`` commands that need neither Flower nor torch
(``stamen device``, ``stamen certs``) do not pay for them.
"""

from stamen import lazy_attributes

#: Names loaded on first use (``__getattr__``), by module.
_LAZY = {
    "stamen.simulation.baselines.scorers": (
        "mf_scorer",
        "popularity_scorer",
        "shared_model_scorer",
        "train_centralised_mf",
    ),
    "stamen.simulation.baselines.reference": ("train_centralised_reference",),
    "stamen.simulation.config": ("CentralisedSettings", "SimulationConfig", "load_config"),
    "stamen.simulation.protocol.evaluate": ("Scorer", "evaluate"),
    "stamen.simulation.engines.flower": ("FederatedResult", "run_federated"),
    "stamen.simulation.protocol.split": (
        "Split",
        "leave_one_out",
        "ratio_split",
        "sample_negatives",
    ),
}
__getattr__ = lazy_attributes(__name__, _LAZY)

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
    "ratio_split",
    "run_federated",
    "sample_negatives",
    "shared_model_scorer",
    "train_centralised_mf",
    "train_centralised_reference",
]
