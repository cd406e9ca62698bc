"""Behaviour probe: every round record of the batched engine, for fixed seeds, as JSON, and
a comparison of two such files or of two `stamen simulate` results.json files, so a
refactoring can be shown to change nothing (or by how much).

    python benchmarks/behaviour.py probe > before.json        # at one commit
    python benchmarks/behaviour.py probe > after.json         # at another
    python benchmarks/behaviour.py compare before.json after.json
    python benchmarks/behaviour.py compare runA/results.json runB/results.json

The probe: 200 synthetic users and 400 items (seed 0), 4 rounds of 30 devices (seed 3),
user-level DP off, central and distributed (z 0.8, C 0.5), SecAgg+ on and off, the exact
and the fast path; and private trending counts at ε 2. Exact SecAgg+ runs differ from run
to run by Flower's quantisation, which draws from the unseeded global `np.random`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from stamen.simulation.config import load_config
from stamen.simulation.datasets import generate_synthetic
from stamen.simulation.engines.batched import run_batched
from stamen.simulation.engines.flower import initial_shared
from stamen.simulation.engines.trending import private_trending
from stamen.simulation.protocol.split import leave_one_out


def _digest(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _timeless(value):
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


def probe() -> dict:
    split = leave_one_out(generate_synthetic(200, 400, seed=0).interactions, seed=0)
    out = {}
    for dp in ("off", "central", "distributed"):
        for secagg in (False, True):
            for exact in (False, True):
                extra = (
                    {}
                    if dp == "off"
                    else {"dp": {"mode": dp, "noise_multiplier": 0.8, "clip_norm": 0.5}}
                )
                clipping = 8.0 if dp == "distributed" else 1.0
                config = load_config(
                    None,
                    {
                        "dataset": "synthetic",
                        "rounds": 4,
                        "clients_per_round": 30,
                        "eval_every": 2,
                        "seed": 3,
                        "secagg": {"enabled": secagg, "clipping-range": clipping},
                        **extra,
                    },
                )
                torch.manual_seed(0)
                result = run_batched(
                    split,
                    config.server_settings(split.n_users),
                    initial=initial_shared(split.n_items, config),
                    exact=exact,
                )
                out[f"{dp}-secagg{secagg}-exact{exact}"] = {
                    "history": _timeless([record.to_json() for record in result.history]),
                    "shared": _digest(result.shared),
                    "privacy": result.privacy,
                }
    counts, report = private_trending(
        np.arange(50, dtype=np.float64), epsilon=2.0, users=300, cap=5, seed=4
    )
    out["trending"] = {"counts": _digest([counts]), "report": report}
    return out


def _differences(a, b, path: str = "") -> list[tuple[float, str]]:
    if isinstance(a, dict) and isinstance(b, dict):
        found = [(float("inf"), f"{path}.{k}: in one only") for k in set(a) ^ set(b)]
        for k in set(a) & set(b):
            if "seconds" not in k:
                found += _differences(a[k], b[k], f"{path}.{k}")
        return found
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [(float("inf"), f"{path}: lengths {len(a)} and {len(b)}")]
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in _differences(x, y, f"{path}[{i}]")
        ]
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool):
        if a == b:
            return []
        return [(abs(a - b) / max(abs(a), abs(b), 1e-300), path)]
    return [] if a == b else [(float("inf"), f"{path}: {a!r} and {b!r}")]


def compare(first: Path, second: Path) -> int:
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    if "methods" in a:  # results.json of `stamen simulate`: what the run measured
        keep = ("methods", "federated", "privacy", "centralised", "ranker")
        a, b = ({k: r.get(k) for k in keep} for r in (a, b))
    found = sorted(_differences(a, b), reverse=True)
    if not found:
        print("identical to the digit")
        return 0
    print(f"{len(found)} values differ; the largest relative differences:")
    for rel, where in found[:10]:
        print(f"  {rel:.2e}  {where}")
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("probe", help="print the probe's records as JSON")
    diff = sub.add_parser("compare", help="compare two probe outputs or two results.json")
    diff.add_argument("first", type=Path)
    diff.add_argument("second", type=Path)
    args = parser.parse_args()
    if args.command == "probe":
        json.dump(probe(), sys.stdout, indent=1, sort_keys=True, default=repr)
        return 0
    return compare(args.first, args.second)


if __name__ == "__main__":
    raise SystemExit(main())
