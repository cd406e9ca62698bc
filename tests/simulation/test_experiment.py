"""The experiment's progress line copes with every kind of round record: a private run
skips rounds whose Poisson cohort is too small, and such a record has no devices."""

from __future__ import annotations

from stamen.simulation.experiment import round_status


def test_a_skipped_round_gets_a_progress_line_instead_of_a_key_error() -> None:
    skipped = {
        "round": 3,
        "skipped": "Poisson cohort of 7 devices, below the 8 this round needs",
        "privacy": {"epsilon": 2.1, "delta": 0.01},
        "seconds": 0.3,
    }
    assert round_status(skipped) == (
        "skipped (Poisson cohort of 7 devices, below the 8 this round needs), 0.3s"
    )


def test_a_trained_round_shows_its_devices_time_and_ndcg() -> None:
    record = {"round": 2, "devices": 9, "seconds": 1.5, "evaluate": {"ndcg@10": 0.04321}}
    assert round_status(record) == "9 devices, 1.5s  NDCG@10 0.0432"
    failed = {"round": 4, "devices": 0, "seconds": 3.0, "failed": "SecAgg+ halted"}
    assert round_status(failed) == "0 devices, 3.0s  failed (see results.json)"
    secure_failed = {"round": 5, "devices": 8, "seconds": 2.0, "evaluate": {"secure": True}}
    assert round_status(secure_failed) == "8 devices, 2.0s"
