"""SecAgg+ round time against cohort size, on Flower's simulation engine.

    python benchmarks/secagg_rounds.py --cohorts 10 50 100 200 --rounds 5

For each cohort size n, n ML-100K devices (the first n users; the full 1,682-item, dim-64
model: 109,330 parameters per update) train for ``--rounds`` rounds with every device in
every round, once with plain aggregation and once with SecAgg+ (default settings: 5 shares,
threshold 3). A round's time runs from the server configuring it to the strategy finishing
it; the first round (Ray actors warming up) and the last (it also evaluates) are left out,
and the median of the rest is reported. Writes benchmarks/results/secagg-rounds.{json,md}.
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
    parser.add_argument("--cohorts", type=int, nargs="+", default=[10, 50, 100, 200])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    if args.rounds < 3:
        sys.exit("--rounds must be at least 3 (the first and last are not timed)")

    def measure(n: int, secagg: bool, split: Split) -> dict:
        overrides = {
            "rounds": args.rounds,
            "clients_per_round": n,
            "eval_every": 0,
            "secagg": {"enabled": secagg},
        }
        result, wall = timed_federated(overrides, split)
        timed = [h.seconds for h in result.history[1:-1]]
        return {
            "cohort": n,
            "secagg": secagg,
            "median_round_s": statistics.median(timed),
            "rounds_timed": len(timed),
            "round_s": [round(t, 3) for t in timed],
            "upload_bytes_per_device": result.history[-1].upload_bytes_per_device,
            "wall_s": round(wall, 1),
        }

    ml100k_plain_and_secagg(args.cohorts, measure, lambda rows: write(args, rows, argv))


def write(args: argparse.Namespace, rows: list[dict], argv: list[str]) -> None:
    run = command("secagg_rounds.py", argv)
    plain = {r["cohort"]: r for r in rows if not r["secagg"]}
    lines = report_head(
        "SecAgg+ round time against cohort size",
        f"Command: `{run}` (2 CPU cores; Flower simulation engine, 1 CPU per device).",
        columns="devices per round | plain round (s) | SecAgg+ round (s) | ratio"
        " | upload per device, plain → SecAgg+ (bytes)",
    )
    for r in rows:
        if not r["secagg"] or r["cohort"] not in plain:
            continue
        p = plain[r["cohort"]]
        lines.append(
            f"| {r['cohort']} | {p['median_round_s']:.2f} | {r['median_round_s']:.2f} | "
            f"{r['median_round_s'] / p['median_round_s']:.1f}× | "
            f"{p['upload_bytes_per_device']:,} → {r['upload_bytes_per_device']:,} |"
        )
    write_results(args.out, "secagg-rounds", {"command": run, "rows": rows}, lines)


if __name__ == "__main__":
    main(sys.argv[1:])
