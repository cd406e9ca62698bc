"""``stamen sweep``: a grid of tiny synthetic runs on the batched engine, one table across
them (mean ± sample std per variant of what each run's results.json says), resumed without
running anything again, a changed config refused without ``--force``, a bad setting named
before anything runs, and a failing run listed with a non-zero exit after the others ran."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest
from helpers.tiny_simulation import tiny_config
from typer.testing import CliRunner

from stamen.errors import ConfigError
from stamen.simulation import experiment
from stamen.simulation.cli.commands import app
from stamen.simulation.sweep import RunState, load_sweep, plan_runs

runner = CliRunner()

TINY = (
    'dataset = "synthetic"\nrounds = 2\nclients-per-round = 5\n'
    "[two-tower]\ndim = 4\nhidden = 8\nnegatives = 8\n"
)


def _sweep(folder: Path, variants: str, *, seeds: str = "[0, 1]") -> Path:
    """A sweep file over ``folder/tiny.toml`` (20 synthetic users, 200 items) on the
    batched engine, with the ``[variants.…]`` tables ``variants``."""
    tiny_config(folder, users=20, items=200, epochs=1, extra=TINY)
    path = folder / "sweep.toml"
    path.write_text(
        f'config = "tiny.toml"\nseeds = {seeds}\n[base]\nengine = "batched"\n{variants}'
    )
    return path


MODELS = '[variants.mf]\nmodel = "mf"\n[variants.two-tower]\nmodel = "two-tower"\n'


def _strict(path: Path) -> dict:
    """The JSON object at ``path``, which must be standard JSON (no NaN or Infinity)."""
    text = path.read_text()
    assert not re.search(r"\b(NaN|-?Infinity)\b", text), f"{path}: not standard JSON"
    return json.loads(text)


def _refuse_to_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def run_experiment(*args, **kwargs):
        raise AssertionError("the sweep ran an experiment")

    monkeypatch.setattr(experiment, "run_experiment", run_experiment)


def _mtimes(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in out.glob("*/seed-*/*.json")}


def test_a_sweep_aggregates_resumes_and_refuses_a_changed_config(tmp_path, monkeypatch) -> None:
    sweep, out = _sweep(tmp_path, MODELS), tmp_path / "out"
    result = runner.invoke(app, ["sweep", str(sweep), "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split(":")[0] for line in lines if line.endswith(")") and "started" in line] == [
        "[1/4] mf seed 0",
        "[2/4] mf seed 1",
        "[3/4] two-tower seed 0",
        "[4/4] two-tower seed 1",
    ]
    assert sum(": done in " in line for line in lines) == 4, result.output

    record = _strict(out / "sweep.json")
    rows = {row["variant"]: row for row in record["variants"]}
    assert list(rows) == ["mf", "two-tower"] and record["failures"] == []
    for variant, method in (("mf", "federated MF"), ("two-tower", "federated two-tower")):
        runs = [_strict(out / variant / f"seed-{s}" / "results.json") for s in (0, 1)]
        assert [r["seed"] for r in runs] == [0, 1] and runs[0]["engine"] == "batched"
        row = rows[variant]
        assert row["n"] == 2 and row["failed_seeds"] == []
        for metric in ("ndcg@10", "hr@10", "coverage@10"):
            values = [r["methods"][method][metric] for r in runs]
            stats = row["metrics"][metric]
            assert stats["n"] == 2 and stats["values"] == values
            assert stats["mean"] == pytest.approx(statistics.fmean(values))
            assert stats["std"] == pytest.approx(statistics.stdev(values))
        seconds = [r["wall_seconds"]["federated"] for r in runs]
        assert row["metrics"]["federated_seconds"]["mean"] == pytest.approx(
            statistics.fmean(seconds)
        )
        assert "epsilon" not in row["metrics"]  # no user-level DP: no ε to average
    table = (out / "sweep.md").read_text()
    mf = rows["mf"]["metrics"]["ndcg@10"]
    assert "| mf | 2 | " in table and f"{mf['mean']:.4f} ± {mf['std']:.4f}" in table
    assert "| two-tower | 2 | " in table and "ndcg@10" in table
    assert (out / "sweep.png").stat().st_size > 1000

    # resumed: every run is complete with the same config, so nothing runs
    written = _mtimes(out)
    _refuse_to_run(monkeypatch)
    result = runner.invoke(app, ["sweep", str(sweep), "--out", str(out)])
    assert result.exit_code == 0, result.output
    skipped = [line for line in result.output.splitlines() if "skipped" in line]
    assert len(skipped) == 4 and all("complete, same config" in s for s in skipped)
    assert "started" not in result.output and _mtimes(out) == written

    # the base config changed: refused, naming the runs and the setting, nothing run
    tiny = tmp_path / "tiny.toml"
    tiny.write_text(tiny.read_text().replace("rounds = 2", "rounds = 3"))
    result = runner.invoke(app, ["sweep", str(sweep), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "4 runs under" in result.output and "--force" in result.output
    assert "results.json is from another config (rounds 2 -> 3)" in result.output
    assert _mtimes(out) == written
    monkeypatch.undo()
    result = runner.invoke(app, ["sweep", str(sweep), "--out", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert sum(": done in " in line for line in result.output.splitlines()) == 4
    assert _strict(out / "mf" / "seed-0" / "results.json")["config"]["rounds"] == 3


def test_a_bad_setting_is_named_before_anything_runs(tmp_path, monkeypatch) -> None:
    _refuse_to_run(monkeypatch)
    bad = '[variants.typo]\nmodle = "mf"\n[variants.ranker]\nranker = { rounds = 2 }\n'
    sweep, out = _sweep(tmp_path, MODELS + bad), tmp_path / "out"
    result = runner.invoke(app, ["sweep", str(sweep), "--out", str(out)])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert f"{sweep}: the grid does not load; nothing was run" in message
    assert f"variant 'typo': {sweep}: [variants.typo] modle: unknown key" in message
    assert "(did you mean 'model'?)" in message
    assert "variant 'ranker':" in message and "does not run ranker.rounds 2" in message
    assert "variant 'mf'" not in message and not out.exists()


def test_a_failing_run_is_listed_after_the_others_ran(tmp_path) -> None:
    """100 items pass the config (its bound) but not the protocol's 99 sampled negatives,
    which the run finds when it splits the data."""
    failing = '[variants.mf]\nmodel = "mf"\n[variants.tiny-catalogue]\nsynthetic-items = 100\n'
    sweep, out = _sweep(tmp_path, failing, seeds="[3]"), tmp_path / "out"
    result = runner.invoke(app, ["sweep", str(sweep), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "[1/2] mf seed 3: done in" in result.output
    assert "[2/2] tiny-catalogue seed 3: FAILED after" in result.output
    assert "1 of 2 runs failed" in result.output and "needs at least 149 items" in result.output
    record = _strict(out / "sweep.json")
    rows = {row["variant"]: row for row in record["variants"]}
    assert rows["mf"]["n"] == 1 and rows["mf"]["metrics"]["ndcg@10"]["std"] is None
    assert rows["tiny-catalogue"]["n"] == 0 and rows["tiny-catalogue"]["failed_seeds"] == [3]
    assert [(f["variant"], f["seed"]) for f in record["failures"]] == [("tiny-catalogue", 3)]
    table = (out / "sweep.md").read_text()
    assert "| tiny-catalogue | 0 | — |" in table and table.rstrip().count("| 3 |") == 1
    assert "## Failed runs" in table and "- tiny-catalogue seed 3: DataError: " in table
    assert "Traceback" in (out / "tiny-catalogue" / "seed-3" / "run.log").read_text()
    assert not (out / "tiny-catalogue" / "seed-3" / "results.json").exists()


def test_a_grid_is_a_product_and_dry_run_runs_nothing(tmp_path, monkeypatch) -> None:
    _refuse_to_run(monkeypatch)
    tiny_config(tmp_path, users=20, items=200, epochs=1, extra=TINY)
    sweep = tmp_path / "grid.toml"
    sweep.write_text(
        'config = "tiny.toml"\nseeds = [0]\n[grid]\nmodel = ["mf", "two-tower"]\n'
        'engine = ["batched"]\ndp = { mode = ["central"], target-epsilon = [1.0, 4.0] }\n'
    )
    parsed = load_sweep(sweep)
    assert [v.name for v in parsed.variants] == [
        "model=mf,engine=batched,dp.mode=central,dp.target-epsilon=1.0",
        "model=mf,engine=batched,dp.mode=central,dp.target-epsilon=4.0",
        "model=two-tower,engine=batched,dp.mode=central,dp.target-epsilon=1.0",
        "model=two-tower,engine=batched,dp.mode=central,dp.target-epsilon=4.0",
    ]
    runs = plan_runs(parsed, tmp_path / "out")
    assert [(r.config.model, r.config.dp.target_epsilon) for r in runs] == [
        ("mf", 1.0),
        ("mf", 4.0),
        ("two-tower", 1.0),
        ("two-tower", 4.0),
    ]
    assert all(r.state is RunState.TO_RUN and r.config.seed == 0 for r in runs)
    assert runs[0].folder == tmp_path / "out" / parsed.variants[0].name / "seed-0"
    out = tmp_path / "out"
    result = runner.invoke(app, ["sweep", str(sweep), "--out", str(out), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "4 variants × 1 seeds = 4 runs" in result.output
    assert result.output.count("\nrun: ") == 4 and not out.exists()


def test_the_sweep_file_is_checked_whole(tmp_path) -> None:
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(
        'config = "missing.toml"\nseed = [1]\nseeds = [1, 1]\n'
        '[variants.mf]\nmodel = "mf"\nseed = 4\n[grid]\nmodel = ["mf"]\n'
    )
    with pytest.raises(ConfigError) as err:
        load_sweep(sweep)
    message = str(err.value)
    for problem in (
        "5 problems:",
        f"{sweep}: seed: unknown key (did you mean 'seeds'?)",
        f"{sweep}: config: {tmp_path / 'missing.toml'}: config file not found",
        f"{sweep}: seeds: [1, 1] repeats a seed",
        "as named [variants.NAME] tables or as a [grid] product, one of the two",
        f"{sweep}: [variants.mf] seed: each run's seed is the sweep's (seeds)",
    ):
        assert problem in message, message
