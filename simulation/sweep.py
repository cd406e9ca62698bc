"""Sweeps: one base configuration run over seeds × named settings, resumable, summarised
in one table across runs (``stamen sweep``; the command line is
:mod:`stamen.simulation.cli.sweep`).

A sweep file is TOML::

    config = "../ml-100k.toml"  # optional: a `stamen simulate` config, relative to this file
    seeds = [0, 1, 2]
    metric = "ndcg@10"          # optional: the metric plotted (default ndcg@10)

    [base]                      # optional: settings over the config file, as a config writes them
    engine = "batched"

    [variants.mf]               # named variants, each a config's settings ...
    model = "mf"

    [variants.als-eps4]
    algorithm = "als"
    engine = "flower"
    dp = { mode = "distributed", target-epsilon = 4 }

    # ... or, instead of [variants], a product: one variant per combination, named
    # "model=mf,dp.target-epsilon=1" and so on
    # [grid]
    # model = ["mf", "two-tower"]
    # dp.target-epsilon = [1, 4]

A run's config is, later sources winning: the defaults, the config file, ``[base]``,
``--engine``, the variant's settings, then its seed and its folder ``OUT/<variant>/seed-<n>/``
(so ``seed`` and ``output`` are the sweep's, not a setting). Every run is resolved before
any runs (:func:`plan_runs`): one :class:`~stamen.errors.ConfigError` names the sweep file,
each variant and each setting that does not load. A run writes what ``stamen simulate``
writes (:func:`~stamen.simulation.experiment.run_experiment`), its log ``run.log`` and,
once complete, ``sweep-run.json`` with the SHA-256 of its resolved config: a later sweep
skips it while that config is unchanged, and refuses to replace it (unless forced) when it
changed. :func:`run_sweep` runs the rest, each failure recorded and the others run, then
writes ``OUT/sweep.md``, ``OUT/sweep.json`` and ``OUT/sweep.png``: per variant, the mean ±
sample standard deviation over its complete runs of every metric of the federated model's
row of ``results.json``, its training and total time, and (ε, δ) where it is private.
"""

from __future__ import annotations

import difflib
import enum
import hashlib
import itertools
import json
import re
import time
import tomllib
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from stamen.errors import ConfigError
from stamen.server.run_config import Given
from stamen.simulation.config import SimulationConfig, load_config
from stamen.simulation.sweep_summary import (
    RunOutcome,
    RunStatus,
    SweepResult,
    first_line,
    read_json_object,
    run_metrics,
    summarise,
)

__all__ = [
    "DEFAULT_METRIC",
    "RUN_MARKER",
    "RunState",
    "Sweep",
    "SweepRun",
    "Variant",
    "config_digest",
    "describe",
    "load_sweep",
    "plan_runs",
    "run_sweep",
]

#: The metric a sweep plots unless its file names another (``metric``).
DEFAULT_METRIC = "ndcg@10"

#: The file a complete run of a sweep leaves beside its ``results.json``.
RUN_MARKER = "sweep-run.json"

#: The keys of a sweep file.
_KEYS = ("config", "seeds", "metric", "base", "variants", "grid")

#: What a variant's name (its folder under OUT) may be made of.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=,+-]*")

#: Settings each run takes from the sweep itself, with where they come from.
_OWN = {"seed": "seeds", "output": "--out"}


@dataclass(frozen=True)
class Variant:
    """A named setting of the grid: ``settings`` nested as a config file writes them, and
    ``label``, where the sweep file gives it (``[variants.mf]``, ``[grid]``)."""

    name: str
    settings: dict[str, Any]
    label: str


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file: its ``path``, the base ``config`` file (``None``: the
    defaults), the inline ``base`` settings, the ``seeds``, the ``variants`` and the
    ``metric`` to plot."""

    path: Path
    config: Path | None
    base: dict[str, Any]
    seeds: tuple[int, ...]
    variants: tuple[Variant, ...]
    metric: str = DEFAULT_METRIC


class RunState(enum.Enum):
    """What a run's folder holds before the sweep runs."""

    TO_RUN = "to run"
    COMPLETE = "complete"
    CHANGED = "changed"


@dataclass(frozen=True)
class SweepRun:
    """One run of the grid (a variant at a seed): its resolved ``config`` (whose
    ``output`` is the run's folder), that config's ``digest``, and the ``state`` of its
    folder with the ``reason``."""

    variant: str
    seed: int
    config: SimulationConfig
    digest: str
    state: RunState
    reason: str

    @property
    def folder(self) -> Path:
        """The run's folder, ``OUT/<variant>/seed-<n>``."""
        return self.config.output


# ---------------------------------------------------------------------------------------
# The sweep file


def load_sweep(path: Path) -> Sweep:
    """The sweep file at ``path``, checked whole: one ``ConfigError`` lists every problem
    of its shape (unknown keys, seeds, variants, grid), each named by the file and key.
    Whether each variant's settings load is :func:`plan_runs`' check."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: sweep file not found") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: {err}") from None
    problems = [
        f"{path}: {key}: unknown key{_hint(key, _KEYS)}" for key in data if key not in _KEYS
    ]

    config = data.get("config")
    base_config = None
    if config is not None and not isinstance(config, str):
        problems.append(f"{path}: config: give the path of a config file, relative to the sweep")
    elif config is not None:
        base_config = path.parent / config
        if not base_config.is_file():
            problems.append(f"{path}: config: {base_config}: config file not found")

    base = data.get("base", {})
    if not isinstance(base, dict):
        problems.append(f"{path}: base: give a table of settings ([base])")
        base = {}
    problems += _own_settings(path, "[base]", base)

    seeds = data.get("seeds")
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        problems.append(f"{path}: seeds: give a list of integer seeds (seeds = [0, 1, 2])")
        seeds = []
    elif len(set(seeds)) != len(seeds):
        problems.append(f"{path}: seeds: {seeds} repeats a seed")

    metric = data.get("metric", DEFAULT_METRIC)
    if not isinstance(metric, str):
        problems.append(f"{path}: metric: give a metric's name (metric = {DEFAULT_METRIC!r})")
        metric = DEFAULT_METRIC

    variants: list[Variant] = []
    if ("variants" in data) == ("grid" in data):
        problems.append(
            f"{path}: give the grid as named [variants.NAME] tables or as a [grid] product, "
            "one of the two"
        )
    if "variants" in data:
        named, found = _named_variants(path, data["variants"])
        variants, problems = variants + named, problems + found
    if "grid" in data:
        product, found = _product_variants(path, data["grid"])
        variants, problems = variants + product, problems + found
    for name in sorted({v.name for v in variants if [w.name for w in variants].count(v.name) > 1}):
        problems.append(f"{path}: variant {name!r} is given twice")
    if problems:
        raise ConfigError(_one_error(problems))
    return Sweep(path, base_config, base, tuple(seeds), tuple(variants), metric)


def _named_variants(path: Path, table: Any) -> tuple[list[Variant], list[str]]:
    if not isinstance(table, dict) or not table:
        return [], [f"{path}: variants: give one or more [variants.NAME] tables of settings"]
    variants, problems = [], []
    for name, settings in table.items():
        label = f"[variants.{name}]"
        if not isinstance(settings, dict):
            problems.append(f"{path}: {label}: give a table of settings ({label} model = 'mf')")
            continue
        if not _NAME.fullmatch(name):
            problems.append(f"{path}: {label}: a variant's name is its folder: {_NAME.pattern}")
        problems += _own_settings(path, label, settings)
        variants.append(Variant(name, settings, label))
    return variants, problems


def _product_variants(path: Path, table: Any) -> tuple[list[Variant], list[str]]:
    axes = dict(_leaves(table)) if isinstance(table, dict) else {}
    if not axes:
        return [], [f"{path}: grid: give one or more settings, each a list of values"]
    problems = [
        f"{path}: [grid] {key}: give a non-empty list of values ({key} = [1, 2])"
        for key, values in axes.items()
        if not isinstance(values, list) or not values
    ]
    problems += _own_settings(path, "[grid]", table)
    if problems:
        return [], problems
    variants = []
    for combination in itertools.product(*axes.values()):
        chosen = dict(zip(axes, combination, strict=True))
        name = ",".join(f"{key}={_text(value)}" for key, value in chosen.items())
        if not _NAME.fullmatch(name):
            problems.append(f"{path}: [grid]: {name!r} cannot name a folder: {_NAME.pattern}")
        variants.append(Variant(name, chosen, f"[grid] {name}"))  # dotted keys: settings
    return variants, problems


def _own_settings(path: Path, label: str, settings: Mapping[str, Any]) -> list[str]:
    """Problems: settings the sweep sets itself for each run (the seed, the folder)."""
    return [
        f"{path}: {label} {key}: each run's {key} is the sweep's ({_OWN[key]})"
        for key in settings
        if key in _OWN
    ]


# ---------------------------------------------------------------------------------------
# The runs


def config_digest(config: SimulationConfig) -> str:
    """The SHA-256 of a run's resolved config, all but its output folder (a sweep moved
    elsewhere keeps its runs)."""
    return hashlib.sha256(_canonical(_comparable(config)).encode()).hexdigest()


def plan_runs(sweep: Sweep, out: Path, *, engine: str | None = None) -> list[SweepRun]:
    """Every run of ``sweep`` under ``out`` (variant by variant, seed by seed), each
    config resolved (``engine``: the command line's ``--engine``, above ``[base]`` and
    below a variant's own) and its folder's state read. Raises one ``ConfigError`` naming
    every variant whose settings do not load, and why, before anything runs."""
    problems: dict[str, list[str]] = {}
    runs = []
    for variant in sweep.variants:
        for seed in sweep.seeds:
            folder = Path(out) / variant.name / f"seed-{seed}"
            given = _given(sweep, variant, seed=seed, folder=folder, engine=engine)
            try:
                config = load_config(sweep.config, given)
            except ConfigError as err:
                named = problems.setdefault(str(err), [])
                if variant.name not in named:
                    named.append(variant.name)
                continue
            state, reason = _state(config)
            runs.append(SweepRun(variant.name, seed, config, config_digest(config), state, reason))
    if problems:
        lines = [
            f"variant{'s' if len(names) > 1 else ''} {', '.join(map(repr, names))}: "
            + message.replace("\n", "\n  ")
            for message, names in problems.items()
        ]
        raise ConfigError(
            f"{sweep.path}: the grid does not load; nothing was run:\n  " + "\n  ".join(lines)
        )
    return runs


def _given(sweep: Sweep, variant: Variant, *, seed: int, folder: Path, engine: str | None) -> Given:
    """A run's settings over the base config file, each named as the sweep file wrote it
    (``[variants.mf] model``, ``[base] rounds``, ``--engine``)."""
    values: dict[str, Any] = {}
    names: dict[str, str] = {}

    def put(path: str, value: Any, name: str) -> None:
        key = path.replace("-", "_")
        for other in [p for p in values if _overlaps(p, key)]:
            del values[other], names[other]
        values[key], names[key] = value, name

    for path, value in _leaves(sweep.base):
        put(path, value, f"[base] {path}")
    if engine is not None:
        put("engine", engine, "--engine")
    for path, value in _leaves(variant.settings):
        put(path, value, f"{variant.label} {path}")
    put("seed", seed, "seeds")
    put("output", folder, "--out")
    return Given.flat(values, names, source=str(sweep.path))


def _state(config: SimulationConfig) -> tuple[RunState, str]:
    folder = config.output
    results = read_json_object(folder / "results.json")
    if results is None:
        return RunState.TO_RUN, "no results.json" if folder.exists() else "new"
    marker = read_json_object(folder / RUN_MARKER)
    if marker is None:
        return RunState.CHANGED, f"results.json was not written by a sweep (no {RUN_MARKER})"
    if marker.get("config_sha256") != config_digest(config):
        changed = _differences(results.get("config", {}), _comparable(config))
        return RunState.CHANGED, "results.json is from another config" + (
            f" ({'; '.join(changed[:5])}{'; …' if len(changed) > 5 else ''})" if changed else ""
        )
    if "methods" not in results:
        return RunState.TO_RUN, "results.json is incomplete"
    return RunState.COMPLETE, "complete, same config"


def describe(sweep: Sweep, runs: list[SweepRun], *, force: bool = False) -> list[str]:
    """The grid and what a sweep would do with each run, as lines (``--dry-run``)."""
    lines = [
        f"sweep {sweep.path}: base {sweep.config or 'the defaults'}, "
        f"{len(sweep.variants)} variants × {len(sweep.seeds)} seeds = {len(runs)} runs",
    ]
    if sweep.base:
        lines.append(f"  [base]: {_canonical(sweep.base)}")
    for variant in sweep.variants:
        lines.append(f"  {variant.name}: {_canonical(variant.settings)}")
    counts = dict.fromkeys(RunState, 0)
    for run in runs:
        counts[run.state] += 1
        what = {
            RunState.TO_RUN: "run",
            RunState.COMPLETE: "skip",
            RunState.CHANGED: "rerun (--force)" if force else "refused without --force",
        }[run.state]
        lines.append(
            f"{what}: {run.variant} seed {run.seed} (engine {run.config.engine}, "
            f"{run.folder}): {run.reason}"
        )
    lines.append(
        f"{counts[RunState.TO_RUN]} to run, {counts[RunState.COMPLETE]} complete (skipped), "
        f"{counts[RunState.CHANGED]} changed"
    )
    return lines


def run_sweep(
    sweep: Sweep,
    runs: list[SweepRun],
    out: Path,
    *,
    force: bool = False,
    say: Callable[[str], None] = print,
) -> SweepResult:
    """Run ``runs`` (from :func:`plan_runs`) in order, each as ``stamen simulate`` would,
    ``say``-ing one plain line as each starts and ends; skip the complete ones; then write
    the summary (:func:`summarise`). A run whose folder holds another config's results is
    a ``ConfigError`` before anything runs, unless ``force`` (then it is run again, its
    files replaced). A run that raises is recorded as failed, and the others still run."""
    changed = [run for run in runs if run.state is RunState.CHANGED]
    if changed and not force:
        raise ConfigError(
            f"{sweep.path}: {len(changed)} run{'s' if len(changed) > 1 else ''} under {out} "
            "hold the results of another config; nothing was run (--force runs them again, "
            "replacing their files):\n  "
            + "\n  ".join(f"{run.folder}: {run.reason}" for run in changed)
        )
    from stamen.simulation.experiment import run_experiment

    outcomes = []
    for k, run in enumerate(runs, 1):
        head = f"[{k}/{len(runs)}] {run.variant} seed {run.seed}"
        if run.state is RunState.COMPLETE:
            say(f"{head}: skipped ({run.reason})")
            outcomes.append(RunOutcome(run, RunStatus.SKIPPED))
            continue
        say(f"{head}: started ({run.folder})")
        started = time.perf_counter()
        run.folder.mkdir(parents=True, exist_ok=True)
        (run.folder / RUN_MARKER).unlink(missing_ok=True)  # ours: the run is no longer complete
        log = run.folder / "run.log"
        with log.open("w", encoding="utf-8") as stream:
            try:
                result = run_experiment(run.config, console=Console(file=stream, width=120))
            except Exception as err:  # any failure of one run: recorded, the others go on
                stream.write(traceback.format_exc())
                seconds = time.perf_counter() - started
                error = f"{type(err).__name__}: {err}"
                say(f"{head}: FAILED after {seconds:.1f} s: {first_line(error)} (log: {log})")
                outcomes.append(RunOutcome(run, RunStatus.FAILED, seconds, error))
                continue
        seconds = time.perf_counter() - started
        marker = {
            "sweep": str(sweep.path),
            "variant": run.variant,
            "seed": run.seed,
            "config_sha256": run.digest,
            "seconds": seconds,
        }
        (run.folder / RUN_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        value = run_metrics(result.results).get(sweep.metric)
        shown = f", {sweep.metric} {value:.4f}" if isinstance(value, float) else ""
        say(f"{head}: done in {seconds:.1f} s{shown}")
        outcomes.append(RunOutcome(run, RunStatus.DONE, seconds))
    return summarise(sweep, tuple(outcomes), Path(out))


# ---------------------------------------------------------------------------------------
# Helpers


def _leaves(node: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted path as written, value)`` of every leaf of a nested table."""
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _comparable(config: SimulationConfig) -> dict[str, Any]:
    return config.model_dump(mode="json", exclude={"output"})


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _differences(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """The settings that differ, as ``path old -> new`` (the output folder aside)."""
    old, new = dict(_leaves(before)), dict(_leaves(now))
    return [
        f"{path.replace('_', '-')} {old.get(path)!r} -> {new.get(path)!r}"
        for path in sorted(set(old) | set(new))
        if path != "output" and old.get(path) != new.get(path)
    ]


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) else str(value)


def _hint(key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _one_error(problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems:\n  " + "\n  ".join(problems)
