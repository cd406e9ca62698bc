"""Privacy-utility benchmark: a federated model (MF by default) under user-level DP
(central and distributed noise) with SecAgg+ on, for ε in {1, 2, 4, 8, ∞} at
δ = 1/users, over several seeds.

    python benchmarks/privacy_utility.py --dataset ml-100k --seeds 0 1 2
    python benchmarks/privacy_utility.py --dataset lastfm-2k --seeds 0 1 2
    python benchmarks/privacy_utility.py --dataset ml-100k --model two-tower \
        --model-settings '{"item_ids": false}' --name content-tower --modes central
    python benchmarks/privacy_utility.py --dataset synthetic --users 20000 --items 1000 \
        --seeds 0 1 2
    python benchmarks/privacy_utility.py --dataset ml-100k --model sequential \
        --optimizer '{"lr": 0.001}' --name sequential --modes central

Runs use the batched simulation (``stamen.simulation.engines.batched``: the devices' and server's
arithmetic, Flower's SecAgg+ quantisation included, without Flower's transport), because
this grid is dozens of runs. The DP hyper-parameters (clip norm; cohort and rounds) are
picked once per data set on seed 0's *validation* NDCG@10 at ε = ``--tune-epsilon`` and
then used for every ε, mode and seed; test items are never looked at. Tuning on private
data spends privacy that the reported ε does not count (common practice, stated here).
Cohorts under DP are Poisson samples at rate cohort/users (what the accountant assumes).
A private run reports its last round (choosing by private validation metrics would spend
privacy the accountant does not count); the non-private run keeps the evaluated round
with the best validation NDCG@10. Beside every private run, DP popularity at the same
(ε, δ): one Gaussian release of normalised item counts.

Writes benchmarks/results/privacy-<dataset>[-<name>].{json,md,png} after every run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import Stopwatch, command, local_dataset, report_head, write_results  # noqa: E402

from stamen.models.registry import model_class  # noqa: E402
from stamen.privacy import SecAggSettings, secagg_range_for  # noqa: E402
from stamen.simulation.baselines.scorers import dp_popularity_scorer, popularity_scorer  # noqa: E402
from stamen.simulation.config import load_config  # noqa: E402
from stamen.simulation.datasets import generate_synthetic  # noqa: E402
from stamen.simulation.engines.batched import run_batched  # noqa: E402
from stamen.simulation.engines.flower import (  # noqa: E402
    initial_shared,
    release_catalog,
    release_catalog_of,
)
from stamen.simulation.experiment import select_round  # noqa: E402
from stamen.simulation.protocol.evaluate import evaluate  # noqa: E402
from stamen.simulation.protocol.split import leave_one_out  # noqa: E402

HERE = Path(__file__).resolve().parent
METRICS = ("ndcg@10", "hr@10", "sampled_hr@10")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--modes", nargs="+", default=["central", "distributed"])
    parser.add_argument("--users", type=int, default=20_000, help="synthetic users")
    parser.add_argument("--items", type=int, default=1_000, help="synthetic items")
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--tune-epsilon", type=float, default=4.0)
    parser.add_argument("--clip-norms", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument(
        "--schedules",
        nargs="+",
        default=["64x250", "256x60"],
        help="cohort x rounds pairs tried when tuning (the non-private run uses the first)",
    )
    parser.add_argument("--model", default="mf", help="registered model family")
    parser.add_argument(
        "--model-settings", type=json.loads, default={}, help="JSON of the model's settings"
    )
    parser.add_argument(
        "--optimizer",
        type=json.loads,
        default={},
        help="JSON of the server optimiser's settings (default: ServerSettings')",
    )
    parser.add_argument("--name", default="", help="suffix of the results files")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    return parser.parse_args(argv)


def load_split(dataset: str, seed: int, args: argparse.Namespace):
    if dataset == "synthetic":
        data = generate_synthetic(args.users, args.items, seed=seed)
    else:
        data = local_dataset(dataset)
    catalog = release_catalog(None, data.catalog) if dataset != "synthetic" else None
    return leave_one_out(data.interactions, seed=seed), catalog


def one_run(
    split, catalog, args, *, seed: int, schedule: str, eval_every: int, dp: dict | None
) -> dict:
    cohort, rounds = (int(v) for v in schedule.split("x"))
    clip = dp["clip_norm"] if dp else 1.0
    field = model_class(args.model).settings_field
    levels = SecAggSettings.quantization_for(cohort)
    overrides = {
        "model": args.model,
        field: args.model_settings,
        "seed": seed,
        "rounds": rounds,
        "clients_per_round": cohort,
        "eval_every": eval_every,
        # levels whose honest sum of the cohort fits Flower's 2^32 ring (the settings
        # refuse a cohort that would wrap it)
        "secagg": {"enabled": True, "clipping_range": max(1.0, clip), "quantization_range": levels},
        "optimizer": args.optimizer,
    }
    if dp:
        overrides["dp"] = dp
    config = load_config(None, overrides)
    if dp:  # a SecAgg+ range that never clips the devices' noise shares
        z = config.dp.resolve(population=split.n_users, cohort=cohort, rounds=rounds)
        needed = secagg_range_for(
            noise_multiplier=z.noise_multiplier, clip_norm=clip, cohort=cohort
        )
        secagg = {**overrides["secagg"], "clipping_range": max(1.0, needed)}
        config = load_config(None, {**overrides, "secagg": secagg})
    settings = config.server_settings(split.n_users)
    catalog = catalog or release_catalog_of(split.n_items)
    model = config.run_model(catalog, split.n_users)
    initial = initial_shared(split.n_items, config, catalog)
    result = run_batched(split, settings, initial=initial, model=model)
    best = select_round(result.history, devices=len(split.evaluated), private=dp is not None)
    metrics = best.evaluate.metrics
    return {
        "seed": seed,
        "schedule": schedule,
        "round": best.round,
        "valid_ndcg@10": metrics["valid_ndcg@10"],
        **{m: metrics[m] for m in METRICS},
        "privacy": result.privacy,
        "seconds": round(result.seconds, 1),
        **({"dp_popularity_ndcg@10": _dp_popularity(split, seed, result.privacy)} if dp else {}),
    }


def _dp_popularity(split, seed: int, privacy: dict) -> float:
    scorer, _ = dp_popularity_scorer(
        split, epsilon=privacy["epsilon"], delta=privacy["delta"], seed=seed
    )
    return evaluate(scorer, split)["ndcg@10"]


def tune(split, catalog, args: argparse.Namespace, log) -> tuple[float, str, dict]:
    tried = {}
    for schedule in args.schedules:
        for clip in args.clip_norms:
            dp = {"mode": "central", "target_epsilon": args.tune_epsilon, "clip_norm": clip}
            run = one_run(
                split, catalog, args, seed=0, schedule=schedule, eval_every=args.eval_every, dp=dp
            )
            tried[f"C={clip},{schedule}"] = round(run["valid_ndcg@10"], 4)
            log(f"tune C={clip} {schedule}: valid NDCG@10 {run['valid_ndcg@10']:.4f}")
    key = max(tried, key=tried.get)
    clip_part, schedule = key.split(",")
    return float(clip_part[2:]), schedule, tried


def summarise(runs: list[dict]) -> dict:
    table: dict[str, dict] = {}
    for run in runs:
        table.setdefault(run["setting"], []).append(run)
    out = {}
    for setting, group in table.items():
        out[setting] = {
            m: {
                "mean": float(np.mean([g[m] for g in group])),
                "std": float(np.std([g[m] for g in group])),
            }
            for m in METRICS
        }
        out[setting]["seeds"] = [g["seed"] for g in group]
        dp_pop = [g["dp_popularity_ndcg@10"] for g in group if "dp_popularity_ndcg@10" in g]
        if dp_pop:
            out[setting]["dp_popularity_ndcg@10"] = {
                "mean": float(np.mean(dp_pop)),
                "std": float(np.std(dp_pop)),
            }
        eps = [g["privacy"]["epsilon"] for g in group if g.get("privacy")]
        out[setting]["epsilon_spent"] = max(eps) if eps else math.inf
    return out


def write(args, record: dict) -> None:
    summary = record["summary"]
    base = summary.get("eps=inf", {}).get("ndcg@10", {}).get("mean")
    lines = report_head(
        f"Privacy-utility: {args.dataset}, model {args.model} {json.dumps(args.model_settings)}",
        f"Command: `{record['command']}`",
        f"Users {record['users']}, items {record['items']}; SecAgg+ on in every run; "
        f"δ = 1/users; DP clip norm C = {record['clip_norm']}, cohort x rounds "
        f"{record['schedule']} (tuned on seed 0 validation at ε = {args.tune_epsilon}: "
        f"{record['tuning']}); non-private run: {args.schedules[0]}. "
        f"Popularity NDCG@10: {record['popularity_ndcg@10']:.4f}.",
        columns="setting | seeds | ε spent | NDCG@10 | HR@10 | sampled HR@10 | NDCG vs ε=∞"
        " | DP popularity NDCG@10",
    )
    for setting, s in summary.items():
        ratio = s["ndcg@10"]["mean"] / base if base else float("nan")
        dp_pop = s.get("dp_popularity_ndcg@10")
        dp_text = f"{dp_pop['mean']:.4f} ± {dp_pop['std']:.4f}" if dp_pop else "—"
        lines.append(
            f"| {setting} | {len(s['seeds'])} | {s['epsilon_spent']:.3g} | "
            + " | ".join(f"{s[m]['mean']:.4f} ± {s[m]['std']:.4f}" for m in METRICS)
            + f" | {ratio:.3f} | {dp_text} |"
        )
    lines += ["", f"Wall time so far: {record['seconds']:.0f} s on 2 CPU cores."]
    write_results(args.out, _stem(args), record, lines, default=str)
    plot(args, summary, base)


def plot(args, summary: dict, base: float | None) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, metric in zip(axes, ("ndcg@10", "sampled_hr@10"), strict=True):
        for mode, marker in (("central", "o"), ("distributed", "s")):
            points = [
                (float(k.split("=")[1].split(",")[0]), v[metric])
                for k, v in summary.items()
                if k.endswith(mode)
            ]
            if points:
                points.sort()
                x = [p[0] for p in points]
                ax.errorbar(
                    x,
                    [p[1]["mean"] for p in points],
                    yerr=[p[1]["std"] for p in points],
                    marker=marker,
                    label=mode,
                    capsize=3,
                )
        if "eps=inf" in summary:
            ax.axhline(summary["eps=inf"][metric]["mean"], color="grey", ls="--", label="ε=∞")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("ε (δ = 1/users)")
        ax.set_title(metric)
        ax.legend()
    fig.suptitle(f"{args.dataset}: user-level DP with SecAgg+")
    fig.tight_layout()
    fig.savefig(args.out / f"{_stem(args)}.png", dpi=120)
    plt.close(fig)


def _stem(args) -> str:
    return f"privacy-{args.dataset}" + (f"-{args.name}" if args.name else "")


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    clock = Stopwatch()
    log = clock.log
    split0, catalog = load_split(args.dataset, 0, args)
    popularity = evaluate(popularity_scorer(split0), split0)["ndcg@10"]
    clip, schedule, tried = tune(split0, catalog, args, log)
    log(f"chosen C={clip}, {schedule}")
    record = {
        "command": command("privacy_utility.py", argv),
        "selection": "private runs: the last round; non-private: best validation NDCG@10",
        "model": args.model,
        "model_settings": args.model_settings,
        "optimizer": args.optimizer,
        "users": split0.n_users,
        "items": split0.n_items,
        "clip_norm": clip,
        "schedule": schedule,
        "tuning": tried,
        "popularity_ndcg@10": popularity,
        "runs": [],
    }
    for seed in args.seeds:
        split = split0 if seed == 0 else load_split(args.dataset, seed, args)[0]
        plain = one_run(
            split,
            catalog,
            args,
            seed=seed,
            schedule=args.schedules[0],
            eval_every=args.eval_every,
            dp=None,
        )
        record["runs"].append({"setting": "eps=inf", **plain})
        log(f"seed {seed} ε=∞: NDCG@10 {plain['ndcg@10']:.4f}")
        for mode in args.modes:
            for eps in args.epsilons:
                dp = {"mode": mode, "target_epsilon": eps, "clip_norm": clip}
                run = one_run(
                    split,
                    catalog,
                    args,
                    seed=seed,
                    schedule=schedule,
                    eval_every=args.eval_every,
                    dp=dp,
                )
                record["runs"].append({"setting": f"eps={eps:g},{mode}", **run})
                log(f"seed {seed} ε={eps:g} {mode}: NDCG@10 {run['ndcg@10']:.4f}")
                record["summary"] = summarise(record["runs"])
                record["seconds"] = clock.seconds
                write(args, record)
    log("done")


if __name__ == "__main__":
    main(sys.argv[1:])
