"""What ``stamen simulate`` writes to ``results.json`` beside its results: the exact command,
package versions, the git commit of the working directory (``null`` outside a checkout),
Python and the machine; and only standard JSON (no ``Infinity`` or ``NaN``, ever)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest

from stamen.simulation.config import load_config
from stamen.simulation.experiment import privacy_section
from stamen.simulation.protocol.report import PACKAGES, run_environment, write_results


def _strict(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"not standard JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@dataclass
class _Record:
    round: int
    loss: float


def test_results_are_standard_json_with_null_for_what_is_not_finite(tmp_path) -> None:
    results = {
        "privacy": privacy_section(None, load_config()),
        "metrics": {"ndcg@10": np.float32(0.25), "loss": float("nan")},
        "rounds": [_Record(1, float("inf")), _Record(2, 0.5)],
        "array": np.arange(3),
        "where": tmp_path,
    }
    path = write_results(tmp_path / "results.json", results, command=["stamen", "simulate"])
    record = _strict(path.read_text())
    assert record["privacy"]["mode"] == "off" and record["privacy"]["epsilon"] is None
    assert record["metrics"] == {"ndcg@10": 0.25, "loss": None}
    assert record["rounds"] == [{"round": 1, "loss": None}, {"round": 2, "loss": 0.5}]
    assert record["array"] == [0, 1, 2] and record["where"] == str(tmp_path)
    assert record["command"] == ["stamen", "simulate"]


def test_the_command_versions_machine_and_python_are_recorded(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["stamen", "simulate", "--rounds", "2"])
    monkeypatch.chdir(tmp_path)  # not a git checkout
    record = _strict(write_results(tmp_path / "r.json", {}).read_text())
    assert record["command"] == ["stamen", "simulate", "--rounds", "2"]
    env = record["environment"]
    assert set(env["packages"]) == set(PACKAGES) == {"stamen", "flwr", "torch", "opacus", "numpy"}
    assert env["packages"]["numpy"] == np.__version__ and env["packages"]["stamen"]
    assert env["python"].count(".") == 2 and env["machine"] and env["platform"]
    assert env["git"] is None and env["cwd"] == str(tmp_path)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_the_git_commit_and_whether_it_was_dirty(tmp_path) -> None:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-c", "user.email=t@example.org", "-c", "user.name=t", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    git("init", "-q")
    (tmp_path / "run.toml").write_text("rounds = 2\n")
    git("add", "run.toml")
    git("commit", "-q", "-m", "a run")
    head = git("rev-parse", "HEAD")
    (tmp_path / "results").mkdir()  # untracked output: not dirty
    assert run_environment(tmp_path)["git"] == {"commit": head, "dirty": False}
    (tmp_path / "run.toml").write_text("rounds = 3\n")
    assert run_environment(tmp_path)["git"] == {"commit": head, "dirty": True}
