"""The private ALS run the ALS strategy tests share: its settings and the simulation
config that runs it on a synthetic population."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stamen.simulation.config import SimulationConfig, load_config

#: Private ALS of dimension 4: 2 statistics rounds over a head of 60 items.
ALS = {"dim": 4, "rounds": 2, "head": 60, "cap": 8, "user_clip": 1.0}


def als_config(output: Path, **overrides: Any) -> SimulationConfig:
    """``stamen simulate --algorithm als`` with :data:`ALS` on synthetic data, no
    evaluation rounds, writing to ``output``; ``overrides``: further settings."""
    return load_config(
        None,
        {
            "dataset": "synthetic",
            "algorithm": "als",
            "als": ALS,
            "eval_every": 0,
            "output": str(output),
            **overrides,
        },
    )
