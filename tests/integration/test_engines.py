"""One small run through both engines of ``stamen simulate``: Flower's simulation and the
batched engine draw the same Poisson cohorts, spend the same (ε, δ) and select a round
whose NDCG@10 agrees within SecAgg+'s quantisation (the fast checks of the batched run:
``tests/simulation/engines/test_engines.py``)."""

from __future__ import annotations

import pytest
from helpers.tiny_simulation import on_both_engines, tiny_config

pytestmark = pytest.mark.slow


def test_flower_and_the_batched_engine_select_the_same_round_and_ndcg(tmp_path) -> None:
    path = tiny_config(tmp_path, users=40, items=400, epochs=2, extra="eval-every = 1\n")
    given = {
        "dataset": "synthetic",
        "rounds": 3,
        "clients_per_round": 8,
        "seed": 2,
        "dp": {"mode": "central", "noise_multiplier": 0.5, "clip_norm": 0.5},
    }
    results = on_both_engines(path, given, tmp_path)
    flower, batched = results["flower"], results["batched"]
    assert (flower["engine"], batched["engine"]) == ("flower", "batched")
    assert flower["config"]["secagg"]["enabled"]  # SecAgg+ on both: its quantisation differs

    def cohorts(record: dict) -> list:
        return [
            (r["round"], r.get("cohort"), r.get("skipped")) for r in record["federated"]["rounds"]
        ]

    assert cohorts(flower) == cohorts(batched)
    assert flower["privacy"]["epsilon"] == pytest.approx(batched["privacy"]["epsilon"], rel=1e-12)
    assert flower["federated"]["selected_round"] == batched["federated"]["selected_round"] == 3
    for name in ("ndcg@10", "hr@10", "sampled_ndcg@10"):
        assert batched["methods"]["federated MF"][name] == pytest.approx(
            flower["methods"]["federated MF"][name], abs=1e-5
        ), name
    offline = flower["federated"]["offline_check"]["ndcg@10"]
    assert batched["federated"]["offline_check"]["ndcg@10"] == pytest.approx(offline, abs=1e-5)
    assert flower["wall_seconds"]["federated"] > batched["wall_seconds"]["federated"]
