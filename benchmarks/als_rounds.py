"""Private ALS on Flower's simulation engine: round time and upload, plain and SecAgg+.

    python benchmarks/als_rounds.py --users 100 943

For each population (the first n ML-100K users; every device takes part in every round,
as private ALS needs), one run of private ALS (default ``[als]`` settings: dimension 16,
400 head items, 3 ALS rounds after the counts round) with central DP at ε = 4, once with
plain aggregation and once with SecAgg+ (5 shares, threshold 3, clipping range sized for
the statistics). Reported: the counts round's time and the median time of the ALS
rounds (a round runs from the server configuring it to the strategy finishing it; the
last round also evaluates, so it is left out when there are two others), and the bytes
each device uploads per round. Writes benchmarks/results/als-rounds.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from common import command, ml100k_plain_and_secagg, report_head, timed_federated, write_results

from stamen.simulation.protocol.split import Split

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, nargs="+", default=[100, 943])
    parser.add_argument("--epsilon", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)

    def measure(n: int, secagg: bool, split: Split) -> dict:
        overrides = {
            "algorithm": "als",
            "eval_every": 0,
            "dp": {"mode": "central", "target_epsilon": args.epsilon},
            "secagg": {"enabled": secagg, "clipping_range": 2.5},
        }
        result, wall = timed_federated(overrides, split)
        history = result.history
        als = [h.seconds for h in history[1:]]
        timed = als[:-1] if len(als) > 2 else als
        return {
            "users": n,
            "secagg": secagg,
            "counts_round_s": round(history[0].seconds, 3),
            "median_als_round_s": statistics.median(timed),
            "als_round_s": [round(t, 3) for t in als],
            "counts_upload_bytes": history[0].upload_bytes_per_device,
            "als_upload_bytes": history[1].upload_bytes_per_device,
            "epsilon": result.privacy["epsilon"] if result.privacy else None,
            "test_ndcg@10": history[-1].evaluate.metrics["ndcg@10"],
            "wall_s": round(wall, 1),
        }

    ml100k_plain_and_secagg(args.users, measure, lambda rows: write(args, rows, argv))


def write(args: argparse.Namespace, rows: list[dict], argv: list[str]) -> None:
    run = command("als_rounds.py", argv)
    lines = report_head(
        "Private ALS rounds on Flower",
        f"Command: `{run}` (2 CPU cores; Flower simulation engine, 1 CPU per device; "
        f"ML-100K, every device in every round; central DP at ε = {args.epsilon:g}).",
        columns="devices | aggregation | counts round (s) | ALS round, median (s)"
        " | upload per device: counts → ALS (bytes) | ε spent | wall (s)",
    )
    for r in rows:
        lines.append(
            f"| {r['users']} | {'SecAgg+' if r['secagg'] else 'plain'} | "
            f"{r['counts_round_s']:.2f} | {r['median_als_round_s']:.2f} | "
            f"{r['counts_upload_bytes']:,} → {r['als_upload_bytes']:,} | "
            f"{r['epsilon']:.3g} | {r['wall_s']:.0f} |"
        )
    write_results(args.out, "als-rounds", {"command": run, "rows": rows}, lines)


if __name__ == "__main__":
    main(sys.argv[1:])
