"""How much order a data set's timestamps carry: what a sequential model can learn from.

    python benchmarks/order_quality.py --dataset ml-100k

Per user, interactions sorted by time: the share of consecutive pairs in the same second
(their order is a seeded tie-break in ``stamen.simulation.protocol.split``), within a
minute and within an hour, and the share of users whose test and validation items (the
last two) share a second, so that which one is "next" is a coin flip.

Writes benchmarks/results/order-quality-<dataset>.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from common import command, local_dataset, table_head, write_results

HERE = Path(__file__).resolve().parent


def order_quality(user: np.ndarray, timestamp: np.ndarray) -> dict[str, float]:
    """The shares described in the module docstring."""
    order = np.lexsort((timestamp, user))
    users, times = user[order], timestamp[order]
    same_user = np.diff(users) == 0
    gaps = np.diff(times)[same_user]
    counts = np.bincount(users)
    ends = np.cumsum(counts)[counts >= 3]
    return {
        "consecutive pairs": int(len(gaps)),
        "same second": float(np.mean(gaps == 0)),
        "within a minute": float(np.mean(gaps <= 60)),
        "within an hour": float(np.mean(gaps <= 3600)),
        "users with test and validation in the same second": float(
            np.mean(times[ends - 1] == times[ends - 2])
        ),
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    data = local_dataset(args.dataset).interactions
    if data.timestamp is None:
        raise SystemExit(f"{args.dataset} has no timestamps: its order is a seeded shuffle")
    stats = order_quality(data.user, data.timestamp)
    record = {"command": command("order_quality.py", argv), "dataset": args.dataset, **stats}
    lines = [
        f"# Order in the timestamps: {args.dataset}",
        "",
        f"Command: `{record['command']}`",
        "",
        __doc__.split("\n\n")[2].replace("\n", " "),
        "",
        *table_head("measure | value"),
        *(f"| {k} | {v if isinstance(v, int) else f'{v:.3f}'} |" for k, v in stats.items()),
    ]
    print("\n".join(lines))
    write_results(args.out, f"order-quality-{args.dataset}", record, lines)


if __name__ == "__main__":
    main(sys.argv[1:])
