"""Results of a simulation run: the JSON record, the terminal table and the plot."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from stamen.server.analytics import DEFAULT_CUTOFFS  # noqa: E402

if TYPE_CHECKING:
    from stamen.server.rounds import RoundRecord

__all__ = [
    "PACKAGES",
    "TABLE_METRICS",
    "plot_history",
    "print_table",
    "table_metrics",
    "run_environment",
    "wide_console",
    "write_results",
]


def table_metrics(cutoffs: Sequence[int] = DEFAULT_CUTOFFS) -> tuple[str, ...]:
    """Columns of the final table, in order: HR and NDCG at each cut-off, MRR, coverage at
    the first cut-off (``stamen.simulation.protocol.evaluate``), sampled HR and NDCG at 10."""
    at_k = [f"{name}@{k}" for k in cutoffs for name in ("hr", "ndcg")]
    coverage = f"coverage@{min(cutoffs)}"
    return (*at_k, "mrr", coverage, "sampled_hr@10", "sampled_ndcg@10")


#: :func:`table_metrics` at the default cut-offs.
TABLE_METRICS: tuple[str, ...] = table_metrics()

_SHORT = {
    "hr": "HR",
    "ndcg": "NDCG",
    "coverage": "Cov",
    "sampled_hr": "sHR",
    "sampled_ndcg": "sNDCG",
}


def _header(name: str) -> str:
    """A column's header: ``ndcg@10`` as ``NDCG@10``, ``sampled_hr@10`` as ``sHR@10``."""
    if name == "mrr":
        return "MRR"
    metric, _, k = name.partition("@")
    return f"{_SHORT[metric]}@{k}" if metric in _SHORT and k else name


def wide_console() -> Console:
    """A console for reports: the terminal's width, or 120 columns when not a terminal
    (rich's 80-column default would truncate the results table in logs)."""
    console = Console()
    return console if console.is_terminal else Console(width=120)


#: The packages whose versions every results record names.
PACKAGES: tuple[str, ...] = ("stamen", "flwr", "torch", "opacus", "numpy")


def write_results(
    path: Path, results: dict[str, Any], *, command: Sequence[str] | None = None
) -> Path:
    """Write the results record as indented, standard JSON, with what it takes to trust
    and redo the run later: ``command`` (the exact command line, default ``sys.argv``) and
    ``environment`` (:func:`run_environment`: versions, git commit, Python, machine).

    A number that is not finite is written as ``null``: an ``epsilon`` of ``null`` means
    no finite guarantee (ε = ∞: no user-level DP), a metric of ``null`` was not a number.
    The encoder runs with ``allow_nan=False``, so ``Infinity`` and ``NaN`` can never
    reach the file. Dataclasses become objects, numpy values numbers and lists, anything
    else its ``str``."""
    record = {
        **results,
        "command": list(sys.argv if command is None else command),
        "environment": run_environment(),
    }
    text = json.dumps(_plain(record), indent=2, sort_keys=False, allow_nan=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    return path


def run_environment(cwd: Path | None = None) -> dict[str, Any]:
    """Versions of :data:`PACKAGES` (``null``: not installed), the git checkout of ``cwd``
    (default: the working directory) as ``{"commit", "dirty"}`` (``dirty``: tracked files
    changed since that commit; ``null`` outside a checkout or without git), the Python
    version, the machine and the working directory (which the command's relative paths
    are relative to)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "packages": versions,
        "cwd": str(cwd or Path.cwd()),
        "git": _git(cwd or Path.cwd()),
    }


def _git(cwd: Path) -> dict[str, Any] | None:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):  # no git, or it hangs
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _plain(value: Any) -> Any:
    """``value`` as plain JSON values (see :func:`write_results`)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic | np.ndarray):
        return _plain(value.tolist())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    return str(value)


def print_table(
    rows: dict[str, dict[str, float]],
    *,
    title: str,
    console: Console | None = None,
    negatives: int = 99,
    cutoffs: Sequence[int] = DEFAULT_CUTOFFS,
) -> None:
    """One row per method, one column per metric of :func:`table_metrics` at ``cutoffs``
    (blank if absent)."""
    caption = f"s = sampled protocol ({negatives} negatives); Cov = coverage"
    table = Table(title=title, caption=caption)
    table.add_column("method", no_wrap=True)
    columns = table_metrics(cutoffs)
    for name in columns:
        table.add_column(_header(name), justify="right", no_wrap=True)
    for method, metrics in rows.items():
        table.add_row(method, *(f"{metrics[m]:.4f}" if m in metrics else "—" for m in columns))
    (console or wide_console()).print(table)


def plot_history(
    path: Path,
    history: list[RoundRecord],
    *,
    references: dict[str, dict[str, float]],
    title: str,
    label: str = "federated MF",
) -> Path:
    """Federated NDCG@10 and sampled HR@10 over rounds, with baselines as lines."""
    evaluated = [h.evaluate for h in history if h.evaluate is not None]
    rounds = [h.round for h in history if h.evaluate is not None]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("ndcg@10", "sampled_hr@10"), strict=True):
        ax.plot(
            rounds,
            [e.metrics.get(metric, float("nan")) for e in evaluated],
            marker="o",
            label=label,
        )
        for (name, metrics), style in zip(references.items(), ("--", ":", "-."), strict=False):
            if metric in metrics:
                ax.axhline(metrics[metric], linestyle=style, color="gray", label=name)
        ax.set_xlabel("round")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
