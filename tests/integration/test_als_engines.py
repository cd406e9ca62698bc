"""One private ALS run without noise through both engines of ``stamen simulate``: Flower's
``FederatedALS`` under SecAgg+ and the batched engine's ``private_als_rounds`` keep the
same round records and reach the same test metrics (the fast checks of the batched run:
``tests/simulation/engines/test_als_stage.py``)."""

from __future__ import annotations

import pytest
from helpers.private_als import ALS
from helpers.tiny_simulation import on_both_engines, tiny_config

pytestmark = pytest.mark.slow

#: The round record fields both engines fill for private ALS.
SHARED_FIELDS = ("round", "stage", "cohort", "devices", "failures", "upload_bytes_per_device")


def test_flower_and_the_batched_engine_reach_the_same_private_als_model(tmp_path) -> None:
    path = tiny_config(tmp_path, users=24, items=300, epochs=1)
    given = {"dataset": "synthetic", "algorithm": "als", "als": ALS, "seed": 1}
    results = on_both_engines(path, given, tmp_path)
    flower, batched = results["flower"], results["batched"]
    assert flower["config"]["secagg"]["enabled"]  # SecAgg+ on Flower's, not replayed here

    def rounds(record: dict) -> list[tuple]:
        return [tuple(r.get(k) for k in SHARED_FIELDS) for r in record["federated"]["rounds"]]

    assert rounds(flower) == rounds(batched)
    assert [r[1] for r in rounds(batched)] == ["counts", "statistics", "statistics"]
    assert flower["privacy"]["epsilon"] is batched["privacy"]["epsilon"] is None
    assert flower["federated"]["selected_round"] == batched["federated"]["selected_round"] == 3
    # the same arithmetic but for SecAgg+'s quantisation of the statistics (under 1e-6 a
    # device and coordinate) and float summation order: no top-20 list changes (MRR,
    # which reads the whole ranking, may see a near-tie far down it swap), and the
    # secure evaluation's sum is quantised too (well under 1e-6)
    for name in ("ndcg@10", "hr@10", "ndcg@20", "sampled_ndcg@10"):
        assert batched["methods"]["federated MF"][name] == pytest.approx(
            flower["methods"]["federated MF"][name], abs=1e-6
        ), name
        offline = flower["federated"]["offline_check"][name]
        assert batched["federated"]["offline_check"][name] == offline, name
    assert flower["methods"]["federated MF"]["ndcg@10"] > 0
    assert flower["wall_seconds"]["federated"] > batched["wall_seconds"]["federated"]
