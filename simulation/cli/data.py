"""``stamen data``: look at your own interactions file before a run.

``stamen data inspect FILE --user-col … --item-col …`` reads the file exactly as
``stamen simulate --data FILE`` would (same flags, same ``[data]`` table of a ``--config``
file) and prints what the run would see: users, items, interactions, density, history
lengths, the time range, the duplicates merged and the rows each filter dropped, then
what the evaluation protocol makes of it and the problems it would meet. A file that does
not parse ends it with the file, line and column, and exit status 2.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import typer

from stamen.simulation.cli.options import DATA_FLAGS, settings_options

if TYPE_CHECKING:
    from stamen.models.schema import Dataset
    from stamen.simulation.config import SimulationConfig
    from stamen.simulation.datasets import FileReport

__all__ = ["data_app", "describe", "inspect"]

data_app = typer.Typer(
    name="data",
    help="Look at an interactions file as a run would see it.",
    no_args_is_help=True,
)

#: Interactions a user needs to be evaluated (the split holds out two), and the sampled
#: negatives each evaluated user needs among the items it never touched.
_EVALUATED_FROM = 3
_NEGATIVES = 99

_QUANTILES = ((0.0, "min"), (0.25, "25%"), (0.5, "median"), (0.75, "75%"), (0.9, "90%"))


def _quantiles(counts: np.ndarray) -> str:
    parts = [f"{label} {np.quantile(counts, q):g}" for q, label in _QUANTILES]
    return ", ".join([*parts, f"max {counts.max():g}", f"mean {counts.mean():.1f}"])


def _when(seconds: int) -> str:
    return datetime.fromtimestamp(int(seconds), UTC).strftime("%Y-%m-%d %H:%M:%S")


def describe(dataset: Dataset, report: FileReport) -> list[str]:
    """What a run would see of ``dataset`` (read from a file with ``report``), as lines:
    its size, history lengths, times, what reading merged and dropped, and the problems
    the protocol would meet."""
    inter = dataset.interactions
    per_user = np.bincount(inter.user, minlength=inter.n_users)
    per_item = np.bincount(inter.item, minlength=inter.n_items)
    density = len(inter) / max(inter.n_users * inter.n_items, 1)
    lines = [
        f"{dataset.name}: what `stamen simulate --data` would see",
        f"  users           {inter.n_users:,}",
        f"  items           {inter.n_items:,}",
        f"  interactions    {len(inter):,}",
        f"  density         {density:.4%}",
        f"  history length  {_quantiles(per_user)} (positives per user)",
        f"  item counts     {_quantiles(per_item)} (positives per item)",
    ]
    if inter.timestamp is not None:
        first, last = int(inter.timestamp.min()), int(inter.timestamp.max())
        lines.append(f"  timestamps      {_when(first)} to {_when(last)} UTC")
    else:
        lines.append("  timestamps      none (no time column)")
    lines.append("reading:")
    lines += [f"  {line}" for line in report.lines()]
    evaluated = per_user >= _EVALUATED_FROM
    lines += [
        "the run's protocol (per-user leave-one-out, 99 sampled negatives):",
        f"  evaluated users {int(evaluated.sum()):,}; train only {int((~evaluated).sum()):,}",
    ]
    problems = []
    if not evaluated.any():
        problems.append(f"no user has {_EVALUATED_FROM} interactions: nothing can be evaluated")
    elif (~evaluated).any():
        problems.append(
            f"{int((~evaluated).sum()):,} users have fewer than {_EVALUATED_FROM} "
            "interactions: they train but are not evaluated (--min-user-interactions 3 "
            "drops them)"
        )
    short = evaluated & (inter.n_items - per_user < _NEGATIVES)
    if short.any():
        problems.append(
            f"{int(short.sum()):,} evaluated users have fewer than {_NEGATIVES} items they "
            "never touched: the run cannot draw its sampled negatives and stops"
        )
    if inter.timestamp is None:
        problems.append("no time column: each user's held-out items are drawn at random")
    unlisted = (report.item_metadata or {}).get("items_without_metadata", 0)
    if unlisted:
        problems.append(
            f"{unlisted:,} of the run's items are not in the items file: no title, genres "
            "or year (the content features see nothing of them)"
        )
    lines.append("problems:" if problems else "problems: none")
    lines += [f"  - {problem}" for problem in problems]
    return lines


@data_app.command()
@settings_options(DATA_FLAGS, arguments={"data.path": "FILE"})
def inspect(settings: SimulationConfig) -> None:
    """Print what `stamen simulate --data FILE` would see of FILE, and its problems."""
    from stamen.simulation.datasets import load_interactions_file

    loaded = load_interactions_file(settings.data)
    for line in describe(loaded.dataset, loaded.report):
        typer.echo(line)
