"""What user-level DP costs as the population grows: NDCG@10 kept against ε = ∞.

    python benchmarks/population.py --users 1000 10000 100000 1000000

Synthetic populations (``stamen.simulation.datasets.synthetic``: latent user and item
factors, Zipf item popularity, log-normal item counts around 40; the same 1,000-item
catalogue generator at every size), seed 0, δ = 1/users, ε ∈ ``--epsilons`` and ∞:

- **DP-FedAvg** (``stamen.simulation.engines.batched``: the devices' and server's arithmetic
  vectorised, SecAgg+'s quantisation included): central noise, clip C = 0.5 and 100
  rounds as tuned at 20,000 users (``benchmarks/results/privacy-synthetic.md``), Poisson
  cohorts at rate ``--rate`` (the expected cohort grows with the population), the last
  round reported;
- **private ALS** (``stamen.simulation.baselines.private_als``) with the settings tuned at 20,000
  users (``--als-settings-from``), the last round reported.

"Kept" is NDCG@10 at ε over NDCG@10 at ε = ∞ of the same algorithm and population; the
table also names the smallest population that keeps at least 90% (DP costing under 10%).
Writes benchmarks/results/population[-TAG].{json,md,png} after every run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from stamen.models.mf.model import MFModel  # noqa: E402
from stamen.models.mf.settings import LocalSettings  # noqa: E402
from stamen.privacy import SecAggSettings  # noqa: E402
from stamen.server.als import ALSSettings  # noqa: E402
from stamen.simulation.baselines.private_als import run_private_als  # noqa: E402
from stamen.simulation.baselines.scorers import popularity_scorer, shared_model_scorer  # noqa: E402
from stamen.simulation.config import load_config  # noqa: E402
from stamen.simulation.datasets import generate_synthetic  # noqa: E402
from stamen.simulation.engines.batched import run_batched  # noqa: E402
from stamen.simulation.engines.flower import initial_shared, release_catalog_of  # noqa: E402
from stamen.simulation.protocol.evaluate import evaluate  # noqa: E402
from stamen.simulation.protocol.split import leave_one_out  # noqa: E402

HERE = Path(__file__).resolve().parent
CLIP, ROUNDS = 0.5, 100


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, nargs="+", default=[1000, 10_000, 100_000, 1_000_000])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 4.0, 8.0])
    parser.add_argument("--rate", type=float, default=0.05, help="DP-FedAvg Poisson rate q")
    parser.add_argument("--algorithms", nargs="+", default=["dp-fedavg", "private-als"])
    parser.add_argument(
        "--als-settings-from",
        type=Path,
        default=HERE / "results" / "private-quality-synthetic-20000.json",
    )
    parser.add_argument("--tag", default="", help="results file suffix (population-TAG)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    return parser.parse_args(argv)


def fedavg(split, epsilon: float, rate: float) -> float:
    cohort = max(2, round(rate * split.n_users))
    overrides = {
        "seed": 0,
        "rounds": ROUNDS,
        "clients_per_round": cohort,
        "eval_every": 0,
        "secagg": {  # levels whose honest sum of the cohort fits Flower's 2^32 ring
            "enabled": True,
            "clipping_range": 1.0,
            "quantization_range": SecAggSettings.quantization_for(cohort),
        },
    }
    if math.isfinite(epsilon):
        overrides["dp"] = {"mode": "central", "target_epsilon": epsilon, "clip_norm": CLIP}
    config = load_config(None, overrides)
    settings = config.server_settings(split.n_users)
    result = run_batched(split, settings, initial=initial_shared(split.n_items, config))
    return float(result.history[-1].evaluate.metrics["ndcg@10"])


def als(split, epsilon: float, settings: ALSSettings) -> float:
    result = run_private_als(
        split.train, settings, epsilon=epsilon, delta=1 / split.n_users, seed=0
    )
    local = LocalSettings(dim=settings.dim, alpha=settings.alpha, l2=settings.user_l2)
    scorer = shared_model_scorer(
        [result.items, result.bias],
        split,
        model=MFModel(local, release_catalog_of(split.n_items)),
        seed=0,
    )
    return float(evaluate(scorer, split, stage="test")["ndcg@10"])


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    als_settings = ALSSettings(**json.loads(args.als_settings_from.read_text())["config"])
    rows = []
    for users in args.users:
        split = leave_one_out(generate_synthetic(users, args.items, seed=0).interactions, seed=0)
        popularity = float(evaluate(popularity_scorer(split), split)["ndcg@10"])
        for algorithm in args.algorithms:
            for epsilon in [math.inf, *args.epsilons]:
                tick = time.perf_counter()
                if algorithm == "dp-fedavg":
                    ndcg = fedavg(split, epsilon, args.rate)
                else:
                    ndcg = als(split, epsilon, als_settings)
                rows.append(
                    {
                        "users": users,
                        "algorithm": algorithm,
                        "epsilon": epsilon,
                        "ndcg@10": ndcg,
                        "popularity_ndcg@10": popularity,
                        "seconds": round(time.perf_counter() - tick, 1),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
                write(args, argv, rows, als_settings, time.perf_counter() - started)


def _kept(rows: list[dict]) -> dict[tuple[str, int, float], float]:
    base = {(r["algorithm"], r["users"]): r["ndcg@10"] for r in rows if math.isinf(r["epsilon"])}
    return {
        (r["algorithm"], r["users"], r["epsilon"]): r["ndcg@10"]
        / base[(r["algorithm"], r["users"])]
        for r in rows
        if not math.isinf(r["epsilon"]) and (r["algorithm"], r["users"]) in base
    }


def write(args, argv, rows, als_settings: ALSSettings, seconds: float) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python benchmarks/population.py", *argv])
    stem = "population" + (f"-{args.tag}" if args.tag else "")
    (args.out / f"{stem}.json").write_text(
        json.dumps(
            {
                "command": command,
                "items": args.items,
                "rate": args.rate,
                "fedavg": {"clip_norm": CLIP, "rounds": ROUNDS},
                "als": als_settings.model_dump(),
                "rows": rows,
                "seconds": seconds,
            },
            indent=2,
            default=str,
        )
    )
    kept = _kept(rows)
    lines = [
        "# Utility kept under user-level DP against population size",
        "",
        f"Command: `{command}` (synthetic, {args.items:,} items, seed 0, δ = 1/users; "
        f"{seconds:.0f} s on 2 CPU cores). DP-FedAvg: central noise, C = {CLIP}, {ROUNDS} "
        f"rounds, Poisson cohorts at q = {args.rate}; private ALS: "
        f"`{json.dumps(als_settings.model_dump())}`. Both report their last round.",
        "",
        "| users | algorithm | NDCG@10 at ε = ∞ | "
        + " | ".join(f"kept at ε = {e:g}" for e in args.epsilons)
        + " | popularity NDCG@10 |",
        "|---|---|---|" + "---|" * len(args.epsilons) + "---|",
    ]
    for r in rows:
        if not math.isinf(r["epsilon"]):
            continue
        cells = [
            f"{kept[(r['algorithm'], r['users'], e)]:.1%}"
            if (r["algorithm"], r["users"], e) in kept
            else "—"
            for e in args.epsilons
        ]
        lines.append(
            f"| {r['users']:,} | {r['algorithm']} | {r['ndcg@10']:.4f} | "
            + " | ".join(cells)
            + f" | {r['popularity_ndcg@10']:.4f} |"
        )
    lines += ["", "Smallest population keeping at least 90% of NDCG@10:", ""]
    for algorithm in args.algorithms:
        for e in args.epsilons:
            enough = sorted(
                u for (a, u, eps), k in kept.items() if a == algorithm and eps == e and k >= 0.9
            )
            lines.append(
                f"- {algorithm}, ε = {e:g}: "
                + (f"{enough[0]:,} users" if enough else "none of the sizes run")
            )
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for algorithm, style in zip(args.algorithms, ("-", "--"), strict=False):
        for e in args.epsilons:
            points = sorted(
                (u, k) for (a, u, eps), k in kept.items() if a == algorithm and eps == e
            )
            if points:
                axis.plot(
                    *zip(*points, strict=True), style, marker="o", label=f"{algorithm}, ε={e:g}"
                )
    axis.axhline(0.9, color="grey", linewidth=0.8)
    axis.set_xscale("log")
    axis.set_xlabel("devices (synthetic users)")
    axis.set_ylabel("NDCG@10 kept (ε vs ∞)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(args.out / f"{stem}.png", dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main(sys.argv[1:])
