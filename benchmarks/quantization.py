"""int8 item tables against float32: what quantisation costs in quality and saves in bytes.

    python benchmarks/quantization.py --datasets ml-100k lastfm-2k

For each data set, centralised MF with the ``ials`` loss (the devices' model and loss,
default settings, early stopping on validation) is trained on the leave-one-out split.
Its item table then serves as a device would serve it: every person's factor is solved
exactly against the table (``IALSSolver``, history = train and validation items), once
with the float32 table and once with the int8 one (per-row scale), and scored by that
table. Reported: recall@10 of the int8 top-10 against the float32 top-10 (the share of
float32's ten an int8 device also shows), HR@10 and NDCG@10 of both on the held-out test
item (full ranking), and the release file's size both ways.

Writes benchmarks/results/quantization.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import command, local_dataset, report_head, write_results

from stamen.models.bundle import ReleaseBundle
from stamen.models.metrics import top_k
from stamen.models.mf.ials import IALSSolver
from stamen.models.mf.settings import LocalSettings
from stamen.models.quantize import ItemTable
from stamen.simulation.baselines.scorers import train_centralised_mf
from stamen.simulation.config import CentralisedSettings
from stamen.simulation.engines.flower import release_catalog
from stamen.simulation.protocol.evaluate import evaluate
from stamen.simulation.protocol.split import leave_one_out

HERE = Path(__file__).resolve().parent
METRICS = ("hr@10", "ndcg@10")


def measure(name: str, seed: int) -> dict:
    dataset = local_dataset(name)
    split = leave_one_out(dataset.interactions, seed=seed)
    local = LocalSettings()
    started = time.perf_counter()
    model, info = train_centralised_mf(
        split, local=local, settings=CentralisedSettings(), seed=seed
    )
    train_s = time.perf_counter() - started
    items = model.items.weight.detach().numpy().astype(np.float32)
    bias = model.items.bias.detach().numpy().astype(np.float32)
    history = split.seen(include_valid=True)
    row: dict = {
        "dataset": name,
        "items": split.n_items,
        "users": int(len(split.evaluated)),
        "dim": int(items.shape[1]),
        "train_s": train_s,
        "best_epoch": info["best_epoch"],
    }
    tops = {}
    for label, table in (("float32", ItemTable.dense(items)), ("int8", ItemTable.quantize(items))):
        local_p = local.for_population(split.n_users)
        solver = IALSSolver.build(table, bias, alpha=local_p.alpha, l2=local_p.l2)
        users = solver.solve(history)

        def scorer(chunk: np.ndarray, table: ItemTable = table, users: np.ndarray = users):
            return torch.from_numpy(table.scores(users[chunk]) + bias)

        metrics = evaluate(scorer, split, stage="test")
        row[label] = {m: metrics[m] for m in METRICS}
        ids, _ = top_k(scorer(split.evaluated), 10, exclude=history.select(split.evaluated))
        tops[label] = ids
        bundle = ReleaseBundle(
            release=1,
            model="mf",
            settings=local_p.model_dump(),
            arrays={"items.weight": items, "items.bias": bias},
            catalog=release_catalog(split, dataset.catalog),
            popularity=bias,
        )
        encoded = bundle.encode(quantize=["items.weight"] if label == "int8" else [])
        row[label]["bundle_bytes"] = len(encoded)
        row[label]["table_bytes"] = table.nbytes
    pairs = zip(tops["float32"], tops["int8"], strict=True)
    overlap = [len(np.intersect1d(f, q)) / 10 for f, q in pairs]
    row["recall@10_int8_vs_float32"] = float(np.mean(overlap))
    row["identical_top10_share"] = float(np.mean(np.asarray(overlap) == 1.0))
    return row


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["ml-100k", "lastfm-2k"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for name in args.datasets:
        row = measure(name, args.seed)
        rows.append(row)
        print(
            f"{name}: recall@10 int8 vs float32 {row['recall@10_int8_vs_float32']:.4f}; "
            f"NDCG@10 {row['float32']['ndcg@10']:.4f} -> {row['int8']['ndcg@10']:.4f}; "
            f"release {row['float32']['bundle_bytes']:,} -> {row['int8']['bundle_bytes']:,} B",
            flush=True,
        )
    write(args, rows, argv)


def write(args: argparse.Namespace, rows: list[dict], argv: list[str]) -> None:
    run = command("quantization.py", argv)
    lines = report_head(
        "int8 item tables against float32",
        f"Command: `{run}` (seed {args.seed}; centralised MF, `ials` loss, default"
        " settings; every person's factor solved exactly against the served table; full"
        " ranking of the held-out test item).",
        columns="data set | items × dim | recall@10, int8 vs float32 | identical top-10"
        " | HR@10 float32 → int8 | NDCG@10 float32 → int8 | item table (bytes)"
        " | release file (bytes)",
    )
    for r in rows:
        f, q = r["float32"], r["int8"]
        lines.append(
            f"| {r['dataset']} | {r['items']:,} × {r['dim']} | "
            f"{r['recall@10_int8_vs_float32']:.4f} | {r['identical_top10_share']:.1%} | "
            f"{f['hr@10']:.4f} → {q['hr@10']:.4f} | {f['ndcg@10']:.4f} → {q['ndcg@10']:.4f} | "
            f"{f['table_bytes']:,} → {q['table_bytes']:,} | "
            f"{f['bundle_bytes']:,} → {q['bundle_bytes']:,} |"
        )
    record = {"command": run, "seed": args.seed, "rows": rows}
    write_results(args.out, "quantization", record, lines)


if __name__ == "__main__":
    main(sys.argv[1:])
