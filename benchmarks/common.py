"""What the benchmark scripts share: the local data sets, a progress log and the results files.

The scripts run as ``python benchmarks/<script>.py``, which puts this folder on
``sys.path``: they import this module as ``common``.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stamen.models.schema import Dataset
from stamen.simulation.config import load_config
from stamen.simulation.datasets import default_data_dir, find_local, load_dataset
from stamen.simulation.engines.flower import FederatedResult, run_federated
from stamen.simulation.experiments.response import (
    Population,
    population_from_interactions,
    synthetic_population,
)
from stamen.simulation.protocol.split import Split, leave_one_out


def local_path(name: str) -> Path:
    """The folder of data set ``name`` under the data directory; exit when it is missing."""
    path = find_local(name, default_data_dir())
    if path is None:
        sys.exit(f"{name} not found under {default_data_dir()} (set STAMEN_DATA_DIR)")
    return path


def local_dataset(name: str) -> Dataset:
    """Load data set ``name`` from the data directory; exit when it is missing."""
    return load_dataset(name, local_path(name))


def command(script: str, argv: list[str]) -> str:
    """The command line that ran ``benchmarks/<script>`` with ``argv``, for the results."""
    return " ".join([f"python benchmarks/{script}", *map(shlex.quote, argv)])


class Stopwatch:
    """Seconds since the benchmark started, and a progress log stamped with them."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        """Seconds since the stopwatch was made."""
        return time.perf_counter() - self.started

    def log(self, message: str) -> None:
        """Print ``message`` at once, after the seconds so far."""
        print(f"[{self.seconds:6.0f}s] {message}", flush=True)


def table_head(columns: str) -> list[str]:
    """The header and separator lines of a Markdown table whose column names, joined by
    ``" | "``, are ``columns``."""
    return [f"| {columns} |", "|" + "---|" * (columns.count(" | ") + 1)]


def report_head(title: str, *paragraphs: str, columns: str) -> list[str]:
    """The first lines of a Markdown results file: ``# title``, the ``paragraphs`` and the
    head of a table (``columns`` as in ``table_head``), each after a blank line."""
    lines = [f"# {title}"]
    for paragraph in paragraphs:
        lines += ["", paragraph]
    return [*lines, "", *table_head(columns)]


def write_results(
    out: Path,
    stem: str,
    record: dict,
    lines: list[str],
    *,
    default: Callable[[Any], Any] | None = None,
) -> None:
    """Write ``record`` to ``out/<stem>.json`` (``default`` as in ``json.dumps``) and the
    Markdown ``lines`` to ``out/<stem>.md``, making ``out`` when it is missing."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(record, indent=2, default=default))
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")


def ml100k_plain_and_secagg(
    sizes: list[int],
    measure: Callable[[int, bool, Split], dict],
    write: Callable[[list[dict]], None],
) -> None:
    """For each size n, measure the first n ML-100K users (their leave-one-out split, seed
    0) without SecAgg+ and then with it: ``measure(n, secagg, split)`` returns a row, which
    is printed as JSON, and ``write`` gets every row so far after each."""
    full = leave_one_out(local_dataset("ml-100k").interactions, seed=0)
    rows: list[dict] = []
    for n in sizes:
        split = full.select(np.arange(n))
        for secagg in (False, True):
            rows.append(measure(n, secagg, split))
            print(json.dumps(rows[-1]), flush=True)
            write(rows)


def timed_federated(overrides: dict, split: Split) -> tuple[FederatedResult, float]:
    """Run the Flower simulation once on ``split`` with the config ``overrides`` (results
    in a temporary folder); return its result and the wall-clock seconds it took."""
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(None, {**overrides, "output": tmp})
        started = time.perf_counter()
        result = run_federated(config, split, output=Path(tmp))
        return result, time.perf_counter() - started


# --- the private-experiment benchmarks ---------------------------------------------------

RESULTS = Path(__file__).resolve().parent / "results"


def experiment_arguments(
    parser: argparse.ArgumentParser,
    *,
    populations: Sequence[int] | None = (10_000, 100_000),
    ml100k_size: int = 10_000,
) -> None:
    """The options every private-experiment benchmark takes (``populations`` ``None``: the
    script sizes its populations itself)."""
    if populations is not None:
        parser.add_argument("--populations", type=int, nargs="+", default=list(populations))
    parser.add_argument("--ml100k-size", type=int, default=ml100k_size, help="0: skip ML-100K")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 4.0, math.inf])
    parser.add_argument("--repetitions", type=int, default=1000)
    parser.add_argument("--mode", choices=["central", "distributed"], default="distributed")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="")
    parser.add_argument("--out", type=Path, default=RESULTS)


def experiment_plan(args: argparse.Namespace) -> list[tuple[str, int]]:
    """The populations a run measures: synthetic ones of ``--populations``, then ML-100K
    people resampled to ``--ml100k-size`` (0: none)."""
    plan = [("synthetic", n) for n in args.populations]
    return plan + ([("ml-100k", args.ml100k_size)] if args.ml100k_size else [])


def experiment_population(kind: str, size: int, seed: int, *, genres: bool = False) -> Population:
    """Simulated people: ``synthetic`` ones, or ML-100K's resampled to ``size`` (with each
    item's first genre when ``genres``, for the policies that read them)."""
    if kind == "synthetic":
        return synthetic_population(size, seed=seed)
    dataset = local_dataset("ml-100k")
    inter = dataset.interactions
    assert inter.timestamp is not None
    item_genre = None
    if genres:
        catalog = dataset.catalog
        assert catalog is not None
        index = {name: j for j, name in enumerate(catalog.genre_names)}
        item_genre = np.array([index[g[0]] if g else -1 for g in catalog.genres])
    return population_from_interactions(
        inter.user,
        inter.item,
        inter.timestamp,
        n_items=inter.n_items,
        item_genre=item_genre,
        size=size,
        seed=seed,
    )
