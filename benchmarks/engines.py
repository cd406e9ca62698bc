"""The batched engine on the ML-100K demo's settings: wall time of the federated stage and
the NDCG@10 of its selected round, beside Flower's where a results file has them.

    python benchmarks/engines.py [--flower-results results/ml-100k/results.json ...]

Runs ``stamen simulate --dataset ml-100k --engine batched`` (``run_experiment`` with the
defaults of ``stamen simulate``, those of ``make demo``: 64 rounds of 64 devices, an
evaluation of every device every 32 rounds, SecAgg+ on, seed 0) on
``$STAMEN_DATA_DIR/ml-100k`` (default ``../shared/data``). Each ``--flower-results`` file
is the ``results.json`` of a ``stamen simulate`` run on Flower's engine (``make demo``
writes ``results/ml-100k/results.json``): the batched engine runs that file's config as
well, and the table puts the two engines side by side (selected round, NDCG@10, federated
wall time; Flower's figures are read from the file, not measured here).
Writes benchmarks/results/engine-batched-ml-100k.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import command, report_head, table_head, write_results

from stamen.simulation.config import load_config
from stamen.simulation.datasets import default_data_dir
from stamen.simulation.experiment import run_experiment
from stamen.simulation.protocol.report import wide_console

HERE = Path(__file__).resolve().parent
STEM = "engine-batched-ml-100k"
#: Settings that say where a run wrote, not what it computed.
_WHERE = ("output", "resume", "data_dir", "engine", "cpus_per_client", "ray_address")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flower-results", type=Path, nargs="*", default=[])
    parser.add_argument("--out", type=Path, default=HERE / "results")
    return parser.parse_args(argv)


def batched_run(overrides: dict[str, Any]) -> dict[str, Any]:
    """Run ``overrides`` (settings, as a TOML file nests them) on the batched engine; its
    figures and the whole run's wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(None, {**overrides, "engine": "batched", "output": tmp})
        started = time.perf_counter()
        results = run_experiment(config, console=wide_console()).results
        seconds = time.perf_counter() - started
    return {**figures(results), "run_seconds": round(seconds, 1)}


def figures(results: dict[str, Any]) -> dict[str, Any]:
    """What the table compares, from a ``results.json``."""
    federated = results["federated"]
    name = next(m for m in results["methods"] if m.startswith("federated "))
    return {
        "engine": results.get("engine", "flower"),
        "selected_round": federated["selected_round"],
        "ndcg@10": results["methods"][name]["ndcg@10"],
        "hr@10": results["methods"][name]["hr@10"],
        "centralised_ndcg@10": results["methods"]["centralised MF"]["ndcg@10"],
        "federated_seconds": round(results["wall_seconds"]["federated"], 1),
        "secagg": results["config"]["secagg"]["enabled"],
        "dp": results["config"]["dp"]["mode"],
    }


def settings_of(results: dict[str, Any]) -> dict[str, Any]:
    """A results file's config without where it ran (nor its ``[data]`` section when it
    names no file: its defaults alone would read as a file's settings)."""
    config = {k: v for k, v in results["config"].items() if k not in _WHERE}
    if (config.get("data") or {}).get("path") is None:
        config.pop("data", None)
    return config


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    machine = {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "data_dir": str(default_data_dir()),
    }
    rows = [{"settings": "make demo (defaults)", **batched_run({"dataset": "ml-100k"})}]
    print(json.dumps(rows[-1]), flush=True)
    comparisons = []
    for path in args.flower_results:
        flower = json.loads(path.read_text())
        row = {"settings": str(path), **batched_run(settings_of(flower))}
        rows.append(row)
        print(json.dumps(row), flush=True)
        comparisons.append(
            {
                "flower_results": str(path),
                "flower_results_written": time.strftime(
                    "%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime)
                ),
                "flower_command": flower.get("command"),
                "flower_environment": flower.get("environment"),
                "flower": figures(flower),
                "batched": row,
                "ndcg@10_difference": row["ndcg@10"] - figures(flower)["ndcg@10"],
            }
        )
    machine["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    record = {
        "command": command("engines.py", argv),
        "machine": machine,
        "rows": rows,
        "flower_comparisons": comparisons,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_results(args.out, STEM, record, report(record))


def report(record: dict[str, Any]) -> list[str]:
    machine = record["machine"]
    lines = report_head(
        "The batched engine on ML-100K's demo settings",
        f"Command: `{record['command']}` ({machine['cpus']} CPU cores, load average "
        f"{machine['load_average_before'][0]} before and {machine['load_average_after'][0]} "
        "after: the machine was shared; the batched stage runs BLAS and torch on one thread, "
        "`stamen.simulation.engines.registry.THREADS`). "
        "Each row is `stamen simulate --engine batched` (`run_experiment`) on ML-100K from "
        f"`{machine['data_dir']}`; the federated stage is 64 rounds of 64 devices with two "
        "evaluations of all 943 devices (rounds 32 and 64) unless the row's settings say "
        "otherwise. NDCG@10 is the test NDCG@10 of the selected round (full ranking).",
        columns="settings | SecAgg+ | DP | selected round | NDCG@10 | HR@10 | "
        "federated stage (s) | whole run (s)",
    )
    for r in record["rows"]:
        lines.append(
            f"| {r['settings']} | {'on' if r['secagg'] else 'off'} | {r['dp']} | "
            f"{r['selected_round']} | {r['ndcg@10']:.4f} | {r['hr@10']:.4f} | "
            f"{r['federated_seconds']:.1f} | {r['run_seconds']:.1f} |"
        )
    comparisons = record["flower_comparisons"]
    if not comparisons:
        return lines
    lines += [
        "",
        "Against Flower's simulation engine on the same settings (Flower's figures read from "
        "its results file, measured when and where that run ran):",
        "",
        *table_head(
            "Flower results file | SecAgg+ | NDCG@10 Flower | NDCG@10 batched | difference | "
            "federated stage Flower (s) | batched (s)"
        ),
    ]
    for c in comparisons:
        f, b = c["flower"], c["batched"]
        lines.append(
            f"| `{c['flower_results']}` ({c['flower_results_written']}) | "
            f"{'on' if f['secagg'] else 'off'} | "
            f"{f['ndcg@10']:.6f} | {b['ndcg@10']:.6f} | {c['ndcg@10_difference']:.1e} | "
            f"{f['federated_seconds']:.1f} | {b['federated_seconds']:.1f} |"
        )
    if not any(c["flower"]["secagg"] for c in comparisons):
        lines += [
            "",
            "No Flower run with SecAgg+ on (the demo's setting) was given: SecAgg+ moves the "
            "mean by its quantisation only (one level is 4.8e-7 at the default range), and "
            "the batched rows with and without it differ by "
            f"{abs(record['rows'][0]['ndcg@10'] - record['rows'][-1]['ndcg@10']):.1e} in "
            "NDCG@10.",
        ]
    return lines


if __name__ == "__main__":
    main(sys.argv[1:])
