"""The experiment's progress copes with every kind of round record (a private run skips
rounds whose Poisson cohort is too small, and such a record has no devices), and shows
each round as it ends even where the output is not a terminal (a log file, a pipe)."""

from __future__ import annotations

import io

from rich.console import Console

from stamen.server.rounds import Evaluation, PrivacySpent, RoundRecord
from stamen.simulation.experiment import round_line, round_progress, round_status

SKIPPED = RoundRecord(
    round=3,
    skipped="Poisson cohort of 7 devices, below the 8 this round needs",
    privacy=PrivacySpent(epsilon=2.1, delta=0.01),
    seconds=0.3,
)


def test_a_skipped_round_gets_a_progress_line_instead_of_a_key_error() -> None:
    assert round_status(SKIPPED) == (
        "skipped (Poisson cohort of 7 devices, below the 8 this round needs), 0.3s"
    )


def test_a_trained_round_shows_its_devices_time_and_ndcg() -> None:
    record = RoundRecord(
        round=2, devices=9, seconds=1.5, evaluate=Evaluation(metrics={"ndcg@10": 0.04321})
    )
    assert round_status(record) == "9 devices, 1.5s  NDCG@10 0.0432"
    failed = RoundRecord(round=4, devices=0, seconds=3.0, failed="SecAgg+ halted")
    assert round_status(failed) == "0 devices, 3.0s  failed (see results.json)"
    secure_failed = RoundRecord(round=5, devices=8, seconds=2.0, evaluate=Evaluation(secure=True))
    assert round_status(secure_failed) == "8 devices, 2.0s"


def test_off_a_terminal_each_round_prints_one_plain_line_as_it_ends() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    assert not console.is_terminal
    private = PrivacySpent(epsilon=1.23456, delta=1e-3)
    records = [
        RoundRecord(round=1, cohort=30, devices=30, privacy=private, seconds=2.04),
        SKIPPED,
        RoundRecord(
            round=4,
            cohort=28,
            devices=27,
            privacy=private,
            seconds=3.0,
            evaluate=Evaluation(metrics={"ndcg@10": 0.05, "hr@10": 0.1, "loss": 2.0}, devices=9),
        ),
    ]
    with round_progress(console, rounds=4) as on_round:
        seen = []
        for record in records:
            on_round(record)
            seen.append(out.getvalue().splitlines()[-1])  # printed at once, not at the end
    assert seen == [
        "round 1/4: cohort 30, 30 aggregated, 2.0 s, ε 1.235",
        "round 3/4: skipped (Poisson cohort of 7 devices, below the 8 this round needs), 0.3 s",
        "round 4/4: cohort 28, 27 aggregated, 3.0 s, ε 1.235, NDCG@10 0.0500 HR@10 0.1000",
    ]
    assert out.getvalue().splitlines()[0] == "federated rounds: 4 rounds"
    assert round_line(RoundRecord(round=2, cohort=5, devices=5), rounds=9) == (
        "round 2/9: cohort 5, 5 aggregated, 0.0 s"
    )


def test_on_a_terminal_the_rounds_move_a_progress_bar() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    with round_progress(console, rounds=2) as on_round:
        on_round(RoundRecord(round=1, cohort=3, devices=3, seconds=1.0))
        on_round(RoundRecord(round=2, cohort=3, devices=3, seconds=1.0))
    assert "round 1/2" not in out.getvalue() and "2/2" in out.getvalue()
