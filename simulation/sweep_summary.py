"""A sweep's summary (``stamen sweep``, :mod:`stamen.simulation.sweep`): how each run
ended, what is aggregated of its ``results.json``, and the table, record and plot across
runs (``OUT/sweep.md``, ``OUT/sweep.json``, ``OUT/sweep.png``)."""

from __future__ import annotations

import enum
import json
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stamen.simulation.protocol.report import TABLE_METRICS, write_results

if TYPE_CHECKING:
    from stamen.simulation.sweep import Sweep, SweepRun

__all__ = [
    "RunOutcome",
    "RunStatus",
    "SweepResult",
    "first_line",
    "read_json_object",
    "run_metrics",
    "summarise",
]

#: The table's last columns (its first: ``TABLE_METRICS``, then the other metrics).
_LAST = ("epsilon", "delta", "federated_seconds", "total_seconds")


class RunStatus(enum.Enum):
    """How a run ended in this sweep."""

    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True)
class RunOutcome:
    """A run's end: its ``status``, the seconds it took here, and a failure's ``error``."""

    run: SweepRun
    status: RunStatus
    seconds: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class SweepResult:
    """A finished sweep: every run's outcome, the summary record (``sweep.json``'s body)
    and the files written (``plot`` is ``None`` where nothing could be plotted)."""

    outcomes: tuple[RunOutcome, ...]
    summary: dict[str, Any]
    table: Path
    record: Path
    plot: Path | None

    @property
    def failed(self) -> tuple[RunOutcome, ...]:
        """The runs that failed."""
        return tuple(o for o in self.outcomes if o.status is RunStatus.FAILED)


def run_metrics(results: Mapping[str, Any]) -> dict[str, float | None]:
    """What a sweep aggregates of one run's ``results.json``: every metric of the
    federated model's row of ``methods``, ``federated_seconds`` (training) and
    ``total_seconds`` (every stage), and ``epsilon`` and ``delta`` where the run had
    user-level DP."""
    methods = results.get("methods", {})
    row: Mapping[str, Any] = next((v for k, v in methods.items() if k.startswith("federated ")), {})
    found: dict[str, float | None] = dict(row)
    timings = results.get("wall_seconds", {})
    if "federated" in timings:
        found["federated_seconds"] = timings["federated"]
    if timings:
        found["total_seconds"] = sum(v for v in timings.values() if v is not None)
    privacy = results.get("privacy", {})
    if privacy.get("mode", "off") != "off":
        found["epsilon"] = privacy.get("epsilon")
        found["delta"] = privacy.get("delta")
    return found


def summarise(sweep: Sweep, outcomes: tuple[RunOutcome, ...], out: Path) -> SweepResult:
    """Aggregate the complete runs of ``outcomes`` per variant (mean, sample standard
    deviation and count of each :func:`run_metrics` value; a value that is ``null`` in a
    run is left out of its mean) and write ``out/sweep.json`` (standard JSON: what is not
    a number is ``null``), ``out/sweep.md`` (the table, failures listed) and
    ``out/sweep.png`` (the sweep's metric per variant, with the standard deviation)."""
    rows: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    notes: list[str] = []
    for variant in sweep.variants:
        runs = []
        values: dict[str, list[float]] = {}
        for outcome in (o for o in outcomes if o.run.variant == variant.name):
            run = outcome.run
            entry: dict[str, Any] = {
                "seed": run.seed,
                "status": outcome.status.value,
                "folder": str(run.folder),
                "config_sha256": run.digest,
            }
            if outcome.status is RunStatus.FAILED:
                entry["error"] = outcome.error
                log = str(run.folder / "run.log")
                failures.append(
                    {"variant": variant.name, "seed": run.seed, "error": outcome.error, "log": log}
                )
            else:
                entry["seconds"] = outcome.seconds
                entry["metrics"] = run_metrics(read_json_object(run.folder / "results.json") or {})
                for name, value in entry["metrics"].items():
                    if isinstance(value, int | float):
                        values.setdefault(name, []).append(float(value))
            runs.append(entry)
        rows.append(
            {
                "variant": variant.name,
                "settings": variant.settings,
                "n": sum(1 for r in runs if r["status"] != RunStatus.FAILED.value),
                "failed_seeds": [r["seed"] for r in runs if r["status"] == RunStatus.FAILED.value],
                "metrics": {name: _stats(v) for name, v in _ordered(values).items()},
                "runs": runs,
            }
        )
    out.mkdir(parents=True, exist_ok=True)
    plot = _plot(sweep, rows, out / "sweep.png", notes)
    summary = {
        "sweep": str(sweep.path),
        "config": None if sweep.config is None else str(sweep.config),
        "base": sweep.base,
        "seeds": list(sweep.seeds),
        "metric": sweep.metric,
        "statistics": "mean and sample standard deviation (n - 1) over a variant's complete "
        "runs; std null for fewer than two",
        "variants": rows,
        "failures": failures,
        "plot": None if plot is None else plot.name,
        "notes": notes,
    }
    record = write_results(out / "sweep.json", summary)
    table = out / "sweep.md"
    table.write_text(_markdown(sweep, rows, failures, notes), encoding="utf-8")
    return SweepResult(outcomes, summary, table, record, plot)


def _stats(values: list[float]) -> dict[str, Any]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
        "values": values,
    }


def _ordered(values: dict[str, list[float]]) -> dict[str, list[float]]:
    def key(name: str) -> tuple[int, int, str]:
        if name in TABLE_METRICS:
            return (0, TABLE_METRICS.index(name), name)
        if name in _LAST:
            return (2, _LAST.index(name), name)
        return (1, 0, name)

    return {name: values[name] for name in sorted(values, key=key)}


def _cell(name: str, stats: dict[str, Any] | None, n: int) -> str:
    if stats is None:
        return "—"
    style = {"delta": ".2e", "epsilon": ".3f"}.get(name, ".1f" if "seconds" in name else ".4f")
    cell = format(stats["mean"], style)
    if stats["std"] is not None:
        cell += f" ± {format(stats['std'], style)}"
    if stats["n"] != n:
        cell += f" (n = {stats['n']})"
    return cell


def _markdown(
    sweep: Sweep, rows: list[dict[str, Any]], failures: list[dict[str, Any]], notes: list[str]
) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [name for name in row["metrics"] if name not in columns]
    columns = list(_ordered(dict.fromkeys(columns, [])))
    lines = [
        f"# Sweep {sweep.path.name}",
        "",
        f"Base: {sweep.config or 'the defaults'}; seeds {', '.join(map(str, sweep.seeds))}. "
        "Each cell is the mean ± sample standard deviation over the variant's complete runs "
        "(n); ε and δ only where the variant had user-level DP.",
        "",
        "| variant | n | " + " | ".join(columns) + " | failed seeds |",
        "|---|---|" + "---|" * len(columns) + "---|",
    ]
    for row in rows:
        cells = [_cell(name, row["metrics"].get(name), row["n"]) for name in columns]
        failed = ", ".join(map(str, row["failed_seeds"]))
        lines.append(f"| {row['variant']} | {row['n']} | " + " | ".join(cells) + f" | {failed} |")
    if failures:
        lines += ["", "## Failed runs", ""]
        lines += [
            f"- {f['variant']} seed {f['seed']}: {first_line(f['error'])} (log: {f['log']})"
            for f in failures
        ]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def _plot(sweep: Sweep, rows: list[dict[str, Any]], path: Path, notes: list[str]) -> Path | None:
    from matplotlib.figure import Figure

    shown = [row for row in rows if sweep.metric in row["metrics"]]
    missing = [row["variant"] for row in rows if sweep.metric not in row["metrics"]]
    if missing:
        notes.append(f"Not plotted (no {sweep.metric} in a complete run): {', '.join(missing)}.")
    if not shown:
        path.unlink(missing_ok=True)  # ours: a plot of an earlier sweep would mislead
        return None
    means = [row["metrics"][sweep.metric]["mean"] for row in shown]
    stds = [row["metrics"][sweep.metric]["std"] or 0.0 for row in shown]
    figure = Figure(figsize=(max(4.0, 1.2 * len(shown) + 2), 4.0), layout="constrained")
    axes = figure.subplots()
    axes.bar(range(len(shown)), means, yerr=stds, capsize=4, color="tab:blue")
    axes.set_xticks(range(len(shown)), [row["variant"] for row in shown], rotation=20)
    axes.set_ylabel(f"{sweep.metric} (mean ± std over seeds)")
    axes.set_title(f"{sweep.path.name}: {len(sweep.seeds)} seeds")
    figure.savefig(path, dpi=120)
    return path


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; ``None`` where it is missing or not a complete one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def first_line(text: str | None) -> str:
    """The first non-blank line of ``text`` (``""`` for none)."""
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""
