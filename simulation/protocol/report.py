"""Results of a simulation run: the JSON record, the terminal table and the plot."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

__all__ = ["TABLE_METRICS", "plot_history", "print_table", "wide_console", "write_results"]

#: Columns of the final table, in order.
TABLE_METRICS: tuple[str, ...] = (
    "hr@10",
    "ndcg@10",
    "hr@20",
    "ndcg@20",
    "coverage@10",
    "sampled_hr@10",
    "sampled_ndcg@10",
)

_HEADERS = {
    "hr@10": "HR@10",
    "ndcg@10": "NDCG@10",
    "hr@20": "HR@20",
    "ndcg@20": "NDCG@20",
    "coverage@10": "Cov@10",
    "sampled_hr@10": "sHR@10",
    "sampled_ndcg@10": "sNDCG@10",
}


def wide_console() -> Console:
    """A console for reports: the terminal's width, or 120 columns when not a terminal
    (rich's 80-column default would truncate the results table in logs)."""
    console = Console()
    return console if console.is_terminal else Console(width=120)


def write_results(path: Path, results: dict[str, Any]) -> Path:
    """Write the results record as indented JSON (with the Python and platform versions)."""
    results = {
        **results,
        "environment": {"python": platform.python_version(), "platform": platform.platform()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False, default=str) + "\n")
    return path


def print_table(
    rows: dict[str, dict[str, float]], *, title: str, console: Console | None = None
) -> None:
    """One row per method, one column per metric in ``TABLE_METRICS`` (blank if absent)."""
    table = Table(title=title, caption="s = sampled protocol (99 negatives); Cov = coverage")
    table.add_column("method", no_wrap=True)
    for name in TABLE_METRICS:
        table.add_column(_HEADERS.get(name, name), justify="right", no_wrap=True)
    for method, metrics in rows.items():
        table.add_row(
            method, *(f"{metrics[m]:.4f}" if m in metrics else "—" for m in TABLE_METRICS)
        )
    (console or wide_console()).print(table)


def plot_history(
    path: Path,
    history: list[dict[str, Any]],
    *,
    references: dict[str, dict[str, float]],
    title: str,
    label: str = "federated MF",
) -> Path:
    """Federated NDCG@10 and sampled HR@10 over rounds, with baselines as lines."""
    evaluated = [h for h in history if "evaluate" in h]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("ndcg@10", "sampled_hr@10"), strict=True):
        ax.plot(
            [h["round"] for h in evaluated],
            [h["evaluate"].get(metric, float("nan")) for h in evaluated],
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
