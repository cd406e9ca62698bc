"""The protocol benchmark: popularity, centralised MF, federated MF (Flower simulation)
and implicit's ALS tuned on validation, over several seeds; mean ± std recorded.

    python benchmarks/protocol.py --dataset ml-100k --seeds 0 1 2
    python benchmarks/protocol.py --dataset lastfm-2k --seeds 0 1 2

Writes benchmarks/results/<dataset>.json and .md (the command that produced them included).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from als_baseline import tuned_als
from rich.console import Console

from stamen.simulation.baselines.scorers import train_centralised_mf
from stamen.simulation.config import load_config
from stamen.simulation.datasets import default_data_dir, find_local, load_dataset
from stamen.simulation.experiment import run_experiment
from stamen.simulation.protocol.report import TABLE_METRICS
from stamen.simulation.protocol.split import leave_one_out

HERE = Path(__file__).resolve().parent
METRICS = TABLE_METRICS


def tune_centralised(split, config, *, dims, lrs):
    """Grid-search the centralised baseline on validation NDCG@10 (test never looked at)."""
    scores = {}
    for dim in dims:
        for lr in lrs:
            settings = config.centralised.model_copy(update={"dim": dim, "lr": lr})
            _, info = train_centralised_mf(
                split, local=config.local, settings=settings, seed=config.seed
            )
            scores[(dim, lr)] = info["valid_ndcg@10"]
    dim, lr = max(scores, key=scores.get)
    tried = {f"dim={d},lr={lr_}": round(v, 4) for (d, lr_), v in scores.items()}
    return config.centralised.model_copy(update={"dim": dim, "lr": lr}), tried


def write_summary(args: argparse.Namespace, per_seed: list[dict]) -> list[str]:
    """Write the JSON and markdown records for the seeds done so far."""
    summary = {}
    for method in per_seed[0]["methods"]:
        summary[method] = {
            m: {
                "mean": float(np.mean([s["methods"][method][m] for s in per_seed])),
                "std": float(np.std([s["methods"][method][m] for s in per_seed])),
            }
            for m in METRICS
            if m in per_seed[0]["methods"][method]
        }
    ratio = [
        s["methods"]["federated MF"]["ndcg@10"] / s["methods"]["centralised MF"]["ndcg@10"]
        for s in per_seed
    ]
    command = "python " + " ".join([sys.argv[0], *sys.argv[1:]])
    record = {
        "command": command,
        "dataset": args.dataset,
        "seeds": [s["seed"] for s in per_seed],
        "summary": summary,
        "federated_over_centralised_ndcg@10": {"mean": float(np.mean(ratio)), "per_seed": ratio},
        "per_seed": per_seed,
    }
    out = HERE / "results" / f"{args.dataset}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        f"# {args.dataset}: test metrics, mean ± std over seeds {[s['seed'] for s in per_seed]}",
        "",
        f"Command: `{command}`",
        "",
        "| method | " + " | ".join(METRICS) + " |",
        "|---" * (len(METRICS) + 1) + "|",
    ]
    for method, metrics in summary.items():
        cells = [
            f"{metrics[m]['mean']:.4f} ± {metrics[m]['std']:.4f}" if m in metrics else "—"
            for m in METRICS
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Federated / centralised NDCG@10: {np.mean(ratio):.3f} (per seed: "
        + ", ".join(f"{r:.3f}" for r in ratio)
        + ")",
        "",
        "| seed | federated round kept (best valid) | federated wall s | seed total s | "
        "centralised (dim, lr) | ALS params |",
        "|---|---|---|---|---|---|",
    ]
    for s in per_seed:
        central = s["config"]["centralised"]
        lines.append(
            f"| {s['seed']} | {s['selected_round']} | {s['federated_wall_seconds']:.0f} | "
            f"{s['total_seconds']:.0f} | ({central['dim']}, {central['lr']}) | {s['als_params']} |"
        )
    lines.append("")
    (HERE / "results" / f"{args.dataset}.md").write_text("\n".join(lines))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--config", type=Path, default=None, help="TOML settings for stamen simulate"
    )
    parser.add_argument("--central-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--central-lrs", type=float, nargs="+", default=[0.005, 0.01])
    parser.add_argument("--output", type=Path, default=HERE.parent / "results" / "bench")
    args = parser.parse_args()
    console = Console()
    per_seed: list[dict] = []
    local = find_local(args.dataset, default_data_dir())
    for seed in args.seeds:
        config = load_config(
            args.config,
            {
                "dataset": args.dataset,
                "seed": seed,
                "output": args.output / args.dataset / f"seed{seed}",
            },
        )
        started = time.perf_counter()
        split = leave_one_out(load_dataset(args.dataset, local).interactions, seed=seed)
        best_central, tried = tune_centralised(
            split, config, dims=args.central_dims, lrs=args.central_lrs
        )
        console.print(f"seed {seed}: centralised MF tuned on validation: {best_central} ({tried})")
        config = config.model_copy(update={"centralised": best_central})
        result = run_experiment(config, console=console)
        methods = dict(result.results["methods"])
        als = tuned_als(split, seed=seed)
        methods["implicit ALS (tuned on valid)"] = als["test"]
        console.print(f"seed {seed}: ALS {als['params']} test NDCG@10 {als['test']['ndcg@10']:.4f}")
        per_seed.append(
            {
                "seed": seed,
                "methods": methods,
                "centralised_grid_valid_ndcg@10": tried,
                "als_params": als["params"],
                "federated_wall_seconds": result.results["wall_seconds"]["federated"],
                "total_seconds": time.perf_counter() - started,
                "config": result.results["config"],
                "selected_round": result.results["federated"]["selected_round"],
            }
        )
        lines = write_summary(args, per_seed)

    console.print("\n".join(lines))


if __name__ == "__main__":
    main()
