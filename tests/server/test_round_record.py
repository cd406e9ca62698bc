"""A round's record: its JSON form is what results files, ``rounds.jsonl`` and
checkpoints hold, read back to the same record; an unknown key is an error, not dropped."""

from __future__ import annotations

import json

import pytest
import torch

from stamen.errors import CheckpointError
from stamen.server.checkpoint import Checkpoint, CheckpointStore
from stamen.server.rounds import (
    Evaluation,
    PrivacySpent,
    QueryRecord,
    RecordPrivacy,
    RoundRecord,
    Unidentified,
)

#: A private round with every part, as the strategy recorded it before rounds were typed
#: (a checkpoint's ``history`` entry, a results file's ``rounds`` entry).
OLD_PRIVATE_ROUND = {
    "round": 3,
    "unidentified": [{"node": "1234", "reason": "ValueError: node unavailable"}],
    "cohort": 31,
    "record_privacy": {"epsilon": 0.8312345678901234, "max_participations": 2},
    "privacy": {"epsilon": 1.2345678901234567, "delta": 0.001},
    "fit": {},
    "devices": 30,
    "failures": 1,
    "upload_bytes_per_device": 102408,
    "update_norm": 0.04999999888241291,
    "failure_reasons": ["RuntimeError: out of memory"],
    "dropouts": 1,
    "dropout_reason": "no reply within the stage's timeout",
    "analytics": {
        "trending": {
            "cohort": 48,
            "devices": 47,
            "failures": 1,
            "privacy": {"epsilon": 0.5, "delta": 0.001},
            "noise_std": 2.0000000000000004,
            "items_counted": 312,
        }
    },
    "evaluate": {
        "cohort": 200,
        "devices": 187,
        "failures": 0,
        "privacy": {"epsilon": 0.25, "delta": 0.001},
        "noise_std": 3.1,
        "secure": True,
        "full": True,
        "answered": 200,
        "hr@10": 0.11764705882352941,
        "ndcg@10": 0.05612345678901234,
        "metric_noise_std": 0.016577540106951873,
    },
    "release": "release-000003.stamen",
    "seconds": 1.7034,
}

#: A plain round whose evaluation is in the clear, and a skipped one.
OLD_PLAIN_ROUND = {
    "round": 4,
    "cohort": 10,
    "fit": {"loss": 0.6931471805599453},
    "devices": 9,
    "failures": 1,
    "upload_bytes_per_device": 51204,
    "update_norm": 0.25,
    "rejected": ["node 7: update norm 3.2 above the clip norm 1"],
    "evaluate": {"loss": 0.5, "ndcg@10": 0.04, "devices": 50, "full": False},
    "evaluate_failures": 0,
    "seconds": 0.5,
}
OLD_SKIPPED_ROUND = {
    "round": 5,
    "skipped": "Poisson cohort of 3 devices, below the 5 this round needs",
    "privacy": {"epsilon": 1.3, "delta": 0.001},
    "seconds": 0.001,
}


def test_an_old_checkpoint_still_loads_into_typed_records(tmp_path) -> None:
    path = tmp_path / "round-00005.pt"
    history = [OLD_PRIVATE_ROUND, OLD_PLAIN_ROUND, OLD_SKIPPED_ROUND]
    torch.save({"round": 5, "server_state": {}, "history": history, "fingerprint": {}}, path)
    loaded = CheckpointStore.load(path)
    private, plain, skipped = loaded.history
    assert private.privacy == PrivacySpent(epsilon=1.2345678901234567, delta=0.001)
    assert private.record_privacy == RecordPrivacy(epsilon=0.8312345678901234, max_participations=2)
    assert private.unidentified == [
        Unidentified(node="1234", reason="ValueError: node unavailable")
    ]
    assert private.analytics is not None and private.analytics["trending"].items_counted == 312
    assert private.evaluate is not None and private.evaluate.secure
    assert private.evaluate.metrics == {
        "hr@10": 0.11764705882352941,
        "ndcg@10": 0.05612345678901234,
    }
    assert plain.fit == {"loss": 0.6931471805599453} and plain.evaluate is not None
    assert plain.evaluate.metrics == {"loss": 0.5, "ndcg@10": 0.04} and plain.evaluate.full is False
    assert skipped.skipped is not None and skipped.cohort is None
    # and written back, the same JSON to the digit
    assert [r.to_json() for r in loaded.history] == history
    store = CheckpointStore(tmp_path / "again")
    store.save(Checkpoint(round=5, server_state={}, history=loaded.history, fingerprint={}))
    again = store.latest()
    assert again is not None and again.history == loaded.history


def test_a_record_round_trips_through_json() -> None:
    record = RoundRecord(
        round=7,
        stage="statistics",
        cohort=12,
        privacy=PrivacySpent(epsilon=float("inf"), delta=1e-5),
        devices=12,
        failures=0,
        upload_bytes_per_device=800,
        clipped_user_factors=3,
        analytics={"trending": QueryRecord(cohort=5, skipped="cohort of 5 devices, below 8")},
        evaluate=Evaluation(metrics={"ndcg@10": 0.1}, devices=12, full=True),
        evaluate_failures=1,
        evaluate_failure_reasons=["timeout"],
        aggregation="none: no aggregate arrived",
        failed="round 7 failed",
        seconds=2.5,
    )
    text = json.dumps(record.to_json())
    assert RoundRecord.from_json(json.loads(text)) == record
    # None fields are left out; metrics sit beside the evaluation's own fields
    assert "rejected" not in record.to_json()
    assert record.to_json()["evaluate"] == {"ndcg@10": 0.1, "devices": 12, "full": True}


def test_an_unknown_key_is_named_not_dropped(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"round record of round 3: unknown key 'stages'"):
        RoundRecord.from_json({**OLD_SKIPPED_ROUND, "round": 3, "stages": "counts"})
    with pytest.raises(CheckpointError, match=r"evaluate: unknown key 'note'"):
        RoundRecord.from_json({"round": 1, "evaluate": {"ndcg@10": 0.1, "note": "text"}})
    with pytest.raises(CheckpointError, match=r"analytics\.trending: unknown key 'size'"):
        RoundRecord.from_json({"round": 1, "analytics": {"trending": {"size": 3}}})
    with pytest.raises(CheckpointError, match="round"):
        RoundRecord.from_json({"devices": 3})
    path = tmp_path / "round-00001.pt"
    history = [{**OLD_PLAIN_ROUND, "round": 1, "extra": 1}]
    torch.save({"round": 1, "server_state": {}, "history": history, "fingerprint": {}}, path)
    with pytest.raises(CheckpointError, match=r"round-00001\.pt: .*unknown key 'extra'"):
        CheckpointStore.load(path)
