"""Private trending counts: their error against the true counts, and the trending
generator's hit rate with true vs private counts.

    python benchmarks/trending.py --dataset ml-100k --seeds 0 1 2

Per seed: the project's split (temporal leave-one-out). Every user's device computes its
trending vector (``stamen.client.flower.analytics.trending_vectors``: the items of its training
events inside the window that ends at the split's last training event, at most ``cap``
of them, newest first); ``stamen.simulation.engines.trending`` sums them and releases the sum
through the very ``PrivateSum`` a federated run uses, every device asked once, δ = 1 /
users, the noise calibrated to each ε (central Gaussian). A Flower run sums the vectors
under SecAgg+ first (``tests/integration/test_analytics_rounds.py`` checks that sum
against the plain one), which changes nothing the figures measure. The seed also seeds the noise.

Reported per window and ε: the mean absolute error of the counts over all items and
over the true top 20, the overlap of the private and the true top 10, and the trending
generator's HR@10 (``stamen.client.pipeline.candidates``' registered ``trending`` generator, the
user's own training items excluded, against the user's test item) with the true and the
private counts. ML-100K only: Last.fm-2K has no interaction times.
Writes benchmarks/results/trending-<dataset>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from stamen.client.pipeline.candidates import GENERATORS, ReleaseIndex, Request
from stamen.simulation.datasets import default_data_dir, find_local, load_dataset
from stamen.simulation.engines.flower import release_catalog
from stamen.simulation.engines.trending import private_trending, true_trending
from stamen.simulation.protocol.split import Split, leave_one_out

HERE = Path(__file__).resolve().parent


def _hit_rate(split: Split, index: ReleaseIndex, now: float) -> float:
    generator = GENERATORS["trending"]
    users = split.evaluated
    hits = 0
    for u in users:
        own = split.train.row(u)
        request = Request(
            index=index,
            cf_scores=None,
            history=own,
            history_at=np.zeros(len(own)),
            rejected=np.zeros(0, np.int64),
            rejected_at=np.zeros(0),
            excluded=own,
            now=now,
            context={},
        )
        rows, _ = generator(request, 10)
        hits += int(split.test[u, 0] in rows)  # leave-one-out: one test item
    return hits / len(users)


def _top(counts: np.ndarray, k: int) -> np.ndarray:
    rows = np.arange(len(counts))
    return rows[np.lexsort((rows, -counts))][:k]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--windows", type=float, nargs="+", default=[7.0, 30.0])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--caps", type=int, nargs="+", default=[5, 20])
    args = parser.parse_args(argv)
    data_dir = args.data_dir or default_data_dir()
    dataset = load_dataset(args.dataset, find_local(args.dataset, data_dir))
    if dataset.interactions.timestamp is None:
        sys.exit(f"{args.dataset} has no interaction times: no trending window to count")
    started = time.perf_counter()
    rows = []
    splits = {seed: leave_one_out(dataset.interactions, seed=seed) for seed in args.seeds}
    grid = [(w, c, e) for w in args.windows for c in args.caps for e in [*args.epsilons, math.inf]]
    for window_days, cap, epsilon in grid:
        per_seed = []
        for seed in args.seeds:
            split = splits[seed]
            true, now = true_trending(split, window_days=window_days, cap=cap)
            private, privacy = private_trending(
                true, epsilon=epsilon, users=split.n_users, cap=cap, seed=seed
            )
            catalog = release_catalog(split, dataset.catalog)
            popularity = np.zeros(split.n_items)
            top20 = _top(true, 20)
            per_seed.append(
                {
                    "mae_all": float(np.abs(private - true).mean()),
                    "mae_top20": float(np.abs(private - true)[top20].mean()),
                    "top10_overlap": len(set(_top(private, 10)) & set(_top(true, 10))) / 10,
                    "hr@10_true": _hit_rate(split, ReleaseIndex(catalog, popularity, true), now),
                    "hr@10_private": _hit_rate(
                        split, ReleaseIndex(catalog, popularity, private), now
                    ),
                    "items_counted": int((true > 0).sum()),
                    "true_total": float(true.sum()),
                    "privacy": privacy,
                }
            )
        keys = ["mae_all", "mae_top20", "top10_overlap", "hr@10_true", "hr@10_private"]
        row = {
            "window_days": window_days,
            "cap": cap,
            "epsilon": epsilon,
            "delta": per_seed[0]["privacy"]["delta"],
            "noise_multiplier": per_seed[0]["privacy"]["noise_multiplier"],
            "noise_std": per_seed[0]["privacy"]["noise_std"],
            "true_total": per_seed[0]["true_total"],
            **{k: float(np.mean([s[k] for s in per_seed])) for k in keys},
            **{f"{k}_std": float(np.std([s[k] for s in per_seed])) for k in keys},
            "per_seed": per_seed,
        }
        rows.append(row)
        print(
            f"window {window_days:g} d, cap {cap}, ε={epsilon:g}: MAE {row['mae_all']:.3f} "
            f"(top-20 {row['mae_top20']:.2f}), top-10 overlap {row['top10_overlap']:.2f}, "
            f"HR@10 true {row['hr@10_true']:.4f} private {row['hr@10_private']:.4f}",
            flush=True,
        )
    result = {
        "command": "python benchmarks/trending.py " + " ".join(argv or sys.argv[1:]),
        "dataset": args.dataset,
        "seeds": args.seeds,
        "caps": args.caps,
        "seconds": time.perf_counter() - started,
        "rows": rows,
    }
    out = HERE / "results" / f"trending-{args.dataset}"
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    lines = [
        f"# Private trending counts on {args.dataset}",
        "",
        f"Command: `{result['command']}` ({len(args.seeds)} seeds; every device asked once, "
        "at most `cap` items per device, δ = 1/users, central Gaussian noise).",
        "",
        "| window | cap | ε | z | noise std (counts) | MAE all items | MAE true top 20 | "
        "top-10 overlap | HR@10 true counts | HR@10 private counts |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['window_days']:g} d | {r['cap']} | {r['epsilon']:g} | "
            f"{r['noise_multiplier']:.3g} | "
            f"{r['noise_std']:.3g} | {r['mae_all']:.3f} | {r['mae_top20']:.2f} | "
            f"{r['top10_overlap']:.2f} | {r['hr@10_true']:.4f} | "
            f"{r['hr@10_private']:.4f} ± {r['hr@10_private_std']:.4f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out}.json and .md")


if __name__ == "__main__":
    main()
