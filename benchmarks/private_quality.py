"""Private quality: private ALS against DP popularity and popularity, ε in {1, 2, 4, 8, ∞}.

    python benchmarks/private_quality.py --dataset ml-100k --seeds 0 1 2
    python benchmarks/private_quality.py --dataset lastfm-2k --seeds 0 1 2
    python benchmarks/private_quality.py --dataset synthetic --users 20000 --seeds 0 1 2
    python benchmarks/private_quality.py --dataset synthetic --users 100000 --seeds 0 1 2
    python benchmarks/private_quality.py --dataset ml-100k --tune-only --grid head=200,400 cap=8,32

Every device takes part in every release; δ = 1/users. Private ALS
(``stamen.simulation.baselines.private_als``) spends its ε over the head-item counts and its ALS
rounds together; DP popularity spends the same ε on one release of the item counts. Its
hyper-parameters are chosen once per data set on seed 0's *validation* NDCG@10 at
ε = ``--tune-epsilon`` (a grid, below; each point's mean over ``--tuning-draws`` noise
draws, 3 unless set) and used
for every ε and seed; test items are never
looked at. Tuning on private data spends privacy that the reported ε does not count
(common practice, stated here). The model reported is the last round's: no round is
selected on private validation metrics. Where ``benchmarks/results/privacy-<dataset>.json``
exists, DP-FedAvg's recorded NDCG@10 is shown beside (its rounds *were* selected on
validation; see that file).

``--settings-at EPS=FILE …`` uses, at ε = EPS only, the settings of another tuning file
(one tuned at that ε, ``--tune-epsilon EPS``): the table then says which ε used which.

``--grid FIELD=V1,V2 …`` tunes over another grid of ``ALSSettings`` fields; with
``--tune-only`` only the tuning table is written (``tuning/…-tuning[-eps<ε>].{json,md}``, the
ε named unless it is 4; its ``config`` is what a later ``--settings-from`` takes).

Writes benchmarks/results/private-quality-<dataset>[-<users>][-<tag>].{json,md}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import local_dataset

from stamen.models.mf.model import MFModel
from stamen.models.mf.settings import LocalSettings
from stamen.server.als import ALSSettings
from stamen.simulation.baselines.private_als import run_private_als
from stamen.simulation.baselines.scorers import (
    dp_popularity_scorer,
    popularity_scorer,
    shared_model_scorer,
)
from stamen.simulation.datasets import generate_synthetic
from stamen.simulation.engines.flower import release_catalog_of
from stamen.simulation.protocol.evaluate import evaluate
from stamen.simulation.protocol.split import leave_one_out

HERE = Path(__file__).resolve().parent
#: Noise draws each grid point is tuned over by default (on seed 0's split), so that the
#: choice follows the settings rather than one lucky draw of the noise; draw k uses noise
#: seed 100 + k (``--tuning-draws``).
TUNING_DRAWS = 3
METRICS = ("ndcg@10", "hr@10")
GRID = {
    "rounds": (2, 3, 4),
    "dim": (16, 32),
    "item_l2": (10.0, 30.0),
    "noise_l2": (10.0, 20.0, 40.0),
    "user_clip": (1.0, 2.0),
}
#: ``--small-grid``: for large populations, where one grid point costs minutes.
SMALL_GRID = {
    "rounds": (2, 3),
    "dim": (16,),
    "item_l2": (10.0,),
    "noise_l2": (10.0, 20.0, 40.0),
    "user_clip": (1.0, 2.0),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1, 2, 4, 8, math.inf])
    parser.add_argument("--users", type=int, default=20_000, help="synthetic users")
    parser.add_argument("--items", type=int, default=1_000, help="synthetic items")
    parser.add_argument("--tune-epsilon", type=float, default=4.0)
    parser.add_argument(
        "--tuning-draws",
        type=int,
        default=TUNING_DRAWS,
        help="noise draws each grid point's validation NDCG@10 is the mean of",
    )
    parser.add_argument("--small-grid", action="store_true", help="tune over SMALL_GRID")
    parser.add_argument(
        "--grid",
        nargs="+",
        metavar="FIELD=V1,V2",
        help="tune over this grid of ALSSettings fields instead (e.g. head=300,400 cap=16,32)",
    )
    parser.add_argument(
        "--tune-only",
        action="store_true",
        help="write the tuning table (private-quality-<data>-tuning.{json,md}) and stop",
    )
    parser.add_argument(
        "--settings-from",
        type=Path,
        help="take private ALS settings from this results JSON instead of tuning",
    )
    parser.add_argument(
        "--settings-at",
        nargs="+",
        default=[],
        metavar="EPS=FILE",
        help="at ε = EPS, take private ALS settings from FILE (e.g. one tuned at that ε)",
    )
    parser.add_argument(
        "--tag", default="", help="results file suffix (private-quality-<data>-TAG[-tuning])"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    if args.tuning_draws < 1:
        parser.error(f"--tuning-draws must be at least 1 (got {args.tuning_draws})")
    return args


def settings_at(entries: list[str]) -> dict[float, tuple[str, ALSSettings]]:
    """``EPS=FILE`` entries as ε → (file, the private ALS settings in it)."""
    out = {}
    for entry in entries:
        eps, _, path = entry.partition("=")
        try:
            out[float(eps)] = (path, ALSSettings(**json.loads(Path(path).read_text())["config"]))
        except (ValueError, OSError, KeyError) as error:
            sys.exit(f"--settings-at {entry!r}: expected EPS=FILE with a results JSON ({error})")
    return out


def load_split(args: argparse.Namespace, seed: int):
    if args.dataset == "synthetic":
        data = generate_synthetic(args.users, args.items, seed=seed)
    else:
        data = local_dataset(args.dataset)
    return leave_one_out(data.interactions, seed=seed)


def als_run(split, config: ALSSettings, *, epsilon: float, seed: int) -> dict:
    started = time.perf_counter()
    result = run_private_als(
        split.train, config, epsilon=epsilon, delta=1.0 / split.n_users, seed=seed
    )
    local = LocalSettings(dim=config.dim, alpha=config.alpha, l2=config.user_l2)
    scorer = shared_model_scorer(
        [result.items, result.bias],
        split,
        model=MFModel(local, release_catalog_of(split.n_items)),
        seed=seed,
    )
    test = evaluate(scorer, split, stage="test")
    valid = evaluate(scorer, split, stage="valid", ks=(10,))
    return {
        "method": "private ALS",
        "epsilon_target": epsilon,
        "epsilon": result.epsilon,
        "noise_multiplier": result.noise_multiplier,
        "seed": seed,
        "valid_ndcg@10": valid["ndcg@10"],
        **{m: test[m] for m in METRICS},
        "upload_bytes": result.upload_bytes,
        "seconds": round(time.perf_counter() - started, 2),
    }


def counts_run(split, *, epsilon: float, seed: int) -> dict:
    scorer, spent = dp_popularity_scorer(split, epsilon=epsilon, delta=1 / split.n_users, seed=seed)
    test = evaluate(scorer, split, stage="test")
    return {
        "method": "DP popularity",
        "epsilon_target": epsilon,
        "epsilon": spent,
        "seed": seed,
        **{m: test[m] for m in METRICS},
    }


def parse_grid(entries: list[str]) -> dict[str, tuple]:
    """``FIELD=V1,V2`` entries as a grid over ``ALSSettings`` fields, each value of the
    field's type."""
    grid = {}
    for entry in entries:
        field, _, values = entry.partition("=")
        field = field.replace("-", "_")
        if field not in ALSSettings.model_fields or not values:
            sys.exit(f"--grid {entry!r}: expected FIELD=V1,V2 with FIELD one of ALSSettings'")
        default = ALSSettings.model_fields[field].default
        kind = float if default is None else type(default)  # count_share: None or a float
        parse = {int: lambda v: int(float(v)), bool: lambda v: v.lower() in ("1", "true")}
        grid[field] = tuple(parse.get(kind, kind)(v) for v in values.split(","))
    return grid


def tune(split, args: argparse.Namespace, log) -> tuple[ALSSettings, dict]:
    if args.grid:
        grid = parse_grid(args.grid)
    else:
        grid = SMALL_GRID if args.small_grid else GRID
    tried, configs = {}, {}
    for values in itertools.product(*grid.values()):
        config = ALSSettings(**{"item_grams": False, **dict(zip(grid, values, strict=True))})
        valid = [
            als_run(split, config, epsilon=args.tune_epsilon, seed=noise)["valid_ndcg@10"]
            for noise in range(100, 100 + args.tuning_draws)
        ]
        key = ",".join(f"{k}={v:g}" for k, v in zip(grid, values, strict=True))
        tried[key], configs[key] = round(float(np.mean(valid)), 4), config
        log(f"tune {key}: valid NDCG@10 {tried[key]:.4f}")
    best = max(tried, key=tried.get)
    return configs[best], tried


def write_tuning(args: argparse.Namespace, argv: list[str], tried: dict, best: ALSSettings) -> None:
    """The tuning table alone (``--tune-only``), best first."""
    command = " ".join(["python benchmarks/private_quality.py", *argv])
    stem = _stem(args) + "-tuning"
    if args.tune_epsilon != 4.0:
        stem += f"-eps{args.tune_epsilon:g}"
    folder = args.out / "tuning"  # tuning runs sit below the current records
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(
        json.dumps({"command": command, "config": best.model_dump(), "tuning": tried}, indent=2)
    )
    lines = [
        f"# Private ALS tuning: {args.dataset}",
        "",
        f"Command: `{command}`",
        "",
        f"Validation NDCG@10 of seed 0's split at ε = {args.tune_epsilon:g} (δ = 1/users), "
        f"each the mean of {args.tuning_draws} noise draws; test items never looked "
        f"at. Best: `{json.dumps(best.model_dump())}`.",
        "",
        "| settings | valid NDCG@10 |",
        "|---|---|",
        *(f"| {k} | {v:.4f} |" for k, v in sorted(tried.items(), key=lambda kv: -kv[1])),
    ]
    (folder / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    log = lambda message: print(f"[{time.perf_counter() - started:7.1f}s] {message}", flush=True)  # noqa: E731
    torch.set_num_threads(1)
    if args.settings_from is None:
        config, tried = tune(load_split(args, 0), args, log)
        if args.tune_only:
            write_tuning(args, argv, tried, config)
            return
    else:
        config = ALSSettings(**json.loads(args.settings_from.read_text())["config"])
        tried = {}
    log(f"chosen: {config.model_dump()}")
    at = settings_at(args.settings_at)
    runs = []
    for seed in args.seeds:
        split = load_split(args, seed)
        popularity = evaluate(popularity_scorer(split), split, stage="test")
        runs.append(
            {
                "method": "popularity",
                "epsilon_target": math.inf,
                "seed": seed,
                **{m: popularity[m] for m in METRICS},
            }
        )
        for epsilon in args.epsilons:
            chosen = at[epsilon][1] if epsilon in at else config
            for run in (
                als_run(split, chosen, epsilon=epsilon, seed=seed),
                counts_run(split, epsilon=epsilon, seed=seed),
            ):
                runs.append(run)
                log(f"seed {seed} ε={epsilon:g} {run['method']}: NDCG@10 {run['ndcg@10']:.4f}")
    users = split.n_users
    write(args, argv, config, tried, at, runs, users, split.n_items, time.perf_counter() - started)


def _stem(args: argparse.Namespace) -> str:
    return (
        "private-quality-"
        + args.dataset
        + (f"-{args.users}" if args.dataset == "synthetic" else "")
        + (f"-{args.tag}" if args.tag else "")
    )


def _fedavg(args: argparse.Namespace) -> dict[float, str]:
    """DP-FedAvg's recorded central-noise NDCG@10 per ε (benchmarks/privacy_utility.py;
    for a synthetic population, the record of the same number of users)."""
    names = [f"privacy-{args.dataset}.json"]
    if args.dataset == "synthetic":
        names.insert(0, f"privacy-synthetic-{args.users}.json")
    paths = [args.out / name for name in names if (args.out / name).exists()]
    if not paths:
        return {}
    recorded = json.loads(paths[0].read_text())
    if args.dataset == "synthetic" and recorded.get("users") != args.users:
        return {}
    out = {}
    for setting, row in recorded.get("summary", {}).items():
        if setting == "eps=inf" or setting.endswith(",central"):
            eps = math.inf if setting == "eps=inf" else float(setting.split(",")[0][4:])
            out[eps] = f"{row['ndcg@10']['mean']:.4f} ± {row['ndcg@10']['std']:.4f}"
    return out


def write(args, argv, config, tried, at, runs, users, items, seconds) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python benchmarks/private_quality.py", *argv])
    stem = _stem(args)
    (args.out / f"{stem}.json").write_text(
        json.dumps(
            {
                "command": command,
                "users": users,
                "items": items,
                "delta": 1 / users,
                "config": config.model_dump(),
                "config_at": {str(e): c.model_dump() for e, (_, c) in at.items()},
                "tuning": tried,
                "runs": runs,
                "seconds": seconds,
            },
            indent=2,
            default=str,
        )
    )

    def stat(method: str, eps: float, metric: str) -> tuple[float, str]:
        values = [r[metric] for r in runs if r["method"] == method and r["epsilon_target"] == eps]
        return float(np.mean(values)), f"{np.mean(values):.4f} ± {np.std(values):.4f}"

    pop, pop_text = stat("popularity", math.inf, "ndcg@10")
    fedavg = _fedavg(args)
    if tried:
        chosen = (
            f"tuned on seed 0 validation at ε = {args.tune_epsilon:g} over {len(tried)} grid "
            f"points (each the mean of {args.tuning_draws} noise draws)"
        )
    else:
        chosen = f"taken from `{args.settings_from}` (not tuned here)"
    lines = [
        f"# Private quality: {stem[len('private-quality-') :]}",
        "",
        f"Command: `{command}` ({users:,} users, {items:,} items; δ = 1/users; "
        f"{len(args.seeds)} seeds, mean ± std; {seconds:.0f} s on 2 CPU cores).",
        "",
        f"Private ALS settings, {chosen}: `{json.dumps(config.model_dump())}`; upload per "
        f"device and round {runs[1]['upload_bytes']:,} bytes as float64 (SecAgg+ sends "
        "int64, the same size). The last ALS round is reported. Non-private popularity: "
        f"NDCG@10 {pop_text}.",
        "",
        *[
            f"At ε = {e:g}, private ALS settings from `{path}` instead: "
            f"`{json.dumps(c.model_dump())}`."
            for e, (path, c) in at.items()
        ],
        *([""] if at else []),
        "| ε | private ALS NDCG@10 | vs popularity | DP popularity NDCG@10 | private ALS HR@10 |"
        " DP-FedAvg NDCG@10 (recorded) |",
        "|---|---|---|---|---|---|",
    ]
    for eps in args.epsilons:
        als, als_text = stat("private ALS", eps, "ndcg@10")
        _, dp_text = stat("DP popularity", eps, "ndcg@10")
        _, hr_text = stat("private ALS", eps, "hr@10")
        lines.append(
            f"| {eps:g} | {als_text} | {als / pop - 1:+.1%} | {dp_text} | {hr_text} | "
            f"{fedavg.get(eps, '—')} |"
        )
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
