"""A two-tower or sequential run's centralised reference: its own family trained with no
SecAgg+ and no DP, one optimiser step per batch of users, kept at its best validation round."""

from __future__ import annotations

import numpy as np
import pytest

from stamen.server.rounds import RoundRecord
from stamen.simulation.baselines.reference import train_centralised_reference
from stamen.simulation.config import load_config
from stamen.simulation.datasets import generate_synthetic
from stamen.simulation.engines.flower import release_catalog
from stamen.simulation.protocol.split import leave_one_out

SETTINGS = {
    "two-tower": {"dim": 8, "hidden": 16, "negatives": 16},
    "sequential": {"dim": 8, "hidden": 16, "max_history": 6, "negatives": 16},
}


def _config(model: str, local_epochs: int = 3, **more):
    section = model.replace("-", "_")
    return load_config(
        None,
        {
            "dataset": "synthetic",
            "model": model,
            section: SETTINGS[model] | {"local_epochs": local_epochs},
            "rounds": 4,
            "clients_per_round": 8,
            "eval_every": 2,
            "seed": 3,
            **more,
        },
    )


@pytest.fixture(scope="module")
def split():
    return leave_one_out(generate_synthetic(40, 300, seed=1).interactions, seed=0)


@pytest.mark.parametrize("model", ["two-tower", "sequential"])
def test_the_reference_is_trained_without_secagg_or_dp_and_kept_at_its_best_validation_round(
    split, model
) -> None:
    catalog = release_catalog(split, None)
    records: list[RoundRecord] = []
    scorer, info = train_centralised_reference(
        _config(model), split, catalog, on_round=records.append
    )
    evaluated = {r.round: r.evaluate.metrics["valid_ndcg@10"] for r in records if r.evaluate}
    assert sorted(evaluated) == [2, 4]
    assert info["best_round"] == max(evaluated, key=lambda r: (evaluated[r], -r))
    assert info["valid_ndcg@10"] == max(evaluated.values())
    assert info["rounds"] == 4 and info["batch_users"] == 8 and info["family"] == model
    assert all(r.privacy is None for r in records)  # nothing accounted: no DP

    # what the run asks of its federation (SecAgg+, user-level DP, three local steps
    # per device) does not change its centralised reference: one step per batch
    private = _config(
        model,
        local_epochs=1,
        dp={"mode": "central", "clip_norm": 1.0, "noise_multiplier": 1.0},
        secagg={"enabled": True},
    )
    again, info_again = train_centralised_reference(private, split, catalog)
    users = split.evaluated[:10]
    assert info_again["best_round"] == info["best_round"]
    np.testing.assert_array_equal(scorer(users).numpy(), again(users).numpy())


def test_centralised_rounds_sets_the_references_length(split) -> None:
    config = _config("two-tower", centralised={"rounds": 2})
    _, info = train_centralised_reference(config, split, release_catalog(split, None))
    assert info["rounds"] == 2 and info["best_round"] == 2
