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
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from stamen.simulation.config import load_config
from stamen.simulation.datasets import default_data_dir, find_local, load_dataset
from stamen.simulation.engines.flower import run_federated
from stamen.simulation.protocol.split import leave_one_out

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohorts", type=int, nargs="+", default=[10, 50, 100, 200])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    if args.rounds < 3:
        sys.exit("--rounds must be at least 3 (the first and last are not timed)")
    path = find_local("ml-100k", default_data_dir())
    if path is None:
        sys.exit(f"ml-100k not found under {default_data_dir()} (set STAMEN_DATA_DIR)")
    full = leave_one_out(load_dataset("ml-100k", path).interactions, seed=0)
    rows = []
    for n in args.cohorts:
        split = full.select(np.arange(n))
        for secagg in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                config = load_config(
                    None,
                    {
                        "rounds": args.rounds,
                        "clients_per_round": n,
                        "eval_every": 0,
                        "output": tmp,
                        "secagg": {"enabled": secagg},
                    },
                )
                started = time.perf_counter()
                result = run_federated(config, split, output=Path(tmp))
                wall = time.perf_counter() - started
            timed = [h["seconds"] for h in result.history[1:-1]]
            row = {
                "cohort": n,
                "secagg": secagg,
                "median_round_s": statistics.median(timed),
                "rounds_timed": len(timed),
                "round_s": [round(t, 3) for t in timed],
                "upload_bytes_per_device": result.history[-1]["upload_bytes_per_device"],
                "wall_s": round(wall, 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            write(args, rows, argv)


def write(args: argparse.Namespace, rows: list[dict], argv: list[str]) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/secagg_rounds.py " + " ".join(argv)
    (args.out / "secagg-rounds.json").write_text(
        json.dumps({"command": command, "rows": rows}, indent=2)
    )
    plain = {r["cohort"]: r for r in rows if not r["secagg"]}
    lines = [
        "# SecAgg+ round time against cohort size",
        "",
        f"Command: `{command}` (2 CPU cores; Flower simulation engine, 1 CPU per device).",
        "",
        "| devices per round | plain round (s) | SecAgg+ round (s) | ratio | "
        "upload per device, plain → SecAgg+ (bytes) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if not r["secagg"] or r["cohort"] not in plain:
            continue
        p = plain[r["cohort"]]
        lines.append(
            f"| {r['cohort']} | {p['median_round_s']:.2f} | {r['median_round_s']:.2f} | "
            f"{r['median_round_s'] / p['median_round_s']:.1f}× | "
            f"{p['upload_bytes_per_device']:,} → {r['upload_bytes_per_device']:,} |"
        )
    (args.out / "secagg-rounds.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
