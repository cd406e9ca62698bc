"""Sequential model benchmark: the federated sequential model against federated MF and its
own centralised reference, warm (two histories), cold users and cold items.

    python benchmarks/sequential.py --dataset ml-100k --seeds 0 1 2
    python benchmarks/sequential.py --dataset lastfm-2k --seeds 0 1 2

Protocol, per seed: the cold items, cold users, warm split and evaluation cases of
``benchmarks/two_tower.py`` (10% of the items and 10% of the users never trained on; the
warm users' per-user temporal leave-one-out, full ranking over the whole catalogue, 99
fixed sampled negatives). Every model is trained on the batched engine (each device's own
step, FedAdam on the cohort mean, plain aggregation):

- **MF (iALS)**: ``benchmarks/two_tower.py``'s federated MF, 250 rounds, its last round;
- **sequential, centralised reference**: the same module, loss and data pipeline in the
  one training loop with one local step of rate 1 per device, so each round is one Adam
  step on the mean gradient of a batch of 64 users: centralised mini-batch training;
- **sequential, federated**: the recipe that measured best on validation (``--tune``:
  one local step per device; two local steps learned markedly slower per round) with
  SecAgg+ on (its quantisation in the mean, as Flower's ``SecAggPlusWorkflow``
  reconstructs it). With one local step, federated averaging of the devices' steps *is*
  the centralised mini-batch step, so the two differ by SecAgg+'s quantisation only.

Both sequential runs are measured every ``--eval-every`` rounds and reported at the
round whose *validation* NDCG@10 is highest (the test item is never looked at to choose).
Warm metrics come in two histories: **train** (the standard protocol of every Stamen
benchmark: the test item is scored from the training items, the validation item only
excluded from the ranking) and **train + validation** (the protocol of SASRec and its
successors: everything before the test event is the history, as on a device).

Writes benchmarks/results/sequential-<dataset>[-<name>].{json,md} after every seed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from common import Stopwatch, command, local_dataset, table_head, write_results
from two_tower import (
    _constant,
    _scores,
    cold_item_metrics,
    cold_lines,
    cold_user_metrics,
    protocol,
)
from two_tower import train as train_mf

from stamen.models.registry import DeviceInputs, device_seeds
from stamen.server.rounds import Evaluation
from stamen.simulation.config import load_config
from stamen.simulation.engines.batched import run_batched
from stamen.simulation.engines.flower import initial_shared, release_catalog
from stamen.simulation.protocol.evaluate import evaluate
from stamen.simulation.protocol.split import Split

HERE = Path(__file__).resolve().parent

#: name -> settings of the model, the server optimiser's ``server_lr`` and ``secagg``
#: (chosen on seed 0's validation NDCG@10: ``--tune``, results/tuning/sequential-tuning-*.md)
VARIANTS: dict[str, dict] = {
    "sequential, centralised reference": {"local_epochs": 1, "local_lr": 1.0, "secagg": False},
    "sequential, federated": {"local_epochs": 1, "local_lr": 1.0, "secagg": True},
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=520)
    parser.add_argument("--eval-every", type=int, default=65)
    parser.add_argument("--mf-rounds", type=int, default=250)
    parser.add_argument("--cohort", type=int, default=64)
    parser.add_argument("--server-lr", type=float, default=1e-3)
    parser.add_argument("--max-history", type=int, default=50)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument(
        "--tune",
        type=json.loads,
        nargs="+",
        metavar="JSON",
        help="validation-only tuning on the first seed: one JSON of settings per point "
        "(the model's, server_lr, secagg), written to results/tuning/sequential-tuning-*",
    )
    parser.add_argument("--name", default="", help="suffix of the results files")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    return parser.parse_args(argv)


def tune(args, dataset, catalog, log) -> None:
    """Each ``--tune`` point's validation NDCG@10 by round on the first seed (the test
    items are never scored)."""
    seed = args.seeds[0]
    proto = protocol(dataset, seed)
    record = {"command": command("sequential.py", args.argv), "seed": seed, "points": []}
    for point in args.tune:
        got = train_sequential("tuning", point, proto, catalog, args, seed, log, tuning=True)
        record["points"].append({"settings": point, "valid_ndcg@10": got["curve"]})
        lines = [
            f"# Sequential model, tuning on validation: {args.dataset}",
            "",
            f"Command: `{record['command']}`",
            "",
            f"Seed {seed}: validation NDCG@10 (full ranking, training history) every "
            f"{args.eval_every} rounds of {args.cohort} devices; the test items are never "
            "scored. Protocol as in sequential-<dataset>.md.",
            "",
            *table_head("settings | " + " | ".join(f"round {r}" for r in got["curve"])),
        ]
        for p in record["points"]:
            cells = " | ".join(f"{v:.4f}" for v in p["valid_ndcg@10"].values())
            lines.append(f"| `{json.dumps(p['settings'])}` | {cells} |")
        stem = f"sequential-tuning-{args.dataset}" + (f"-{args.name}" if args.name else "")
        write_results(args.out / "tuning", stem, record, lines, default=str)


def warm_metrics(model, shared, split: Split, seed: int, *, valid_only: bool = False) -> dict:
    """Test metrics from the training history and from training + validation, and the
    validation metrics (training history); ``valid_only``: the validation metrics alone."""

    def scorer(history):
        def score(users: np.ndarray) -> torch.Tensor:
            inputs = DeviceInputs(
                history=history.select(users),
                seeds=device_seeds(users, seed=seed, rnd=0, purpose=2),
            )
            return model.for_serving().scores(shared, inputs)

        return score

    valid = evaluate(scorer(split.train), split, stage="valid", ks=(10,))
    if valid_only:
        return {"valid": valid}
    with_valid = split.seen(include_valid=True)  # each user's validation item last
    return {
        "train": evaluate(scorer(split.train), split, stage="test"),
        "train + validation": evaluate(scorer(with_valid), split, stage="test"),
        "valid": valid,
    }


def train_sequential(
    name: str, settings: dict, proto: dict, catalog, args, seed: int, log, *, tuning: bool = False
) -> dict:
    """Train ``settings`` (the model's, plus ``server_lr`` and ``secagg``) on the warm
    split; every metric at its best-validation round (``tuning``: validation only)."""
    settings = dict(settings)
    server_lr, secagg = settings.pop("server_lr", args.server_lr), settings.pop("secagg")
    split = proto["split"]
    config = load_config(
        None,
        {
            "model": "sequential",
            "sequential": {"max_history": args.max_history} | settings,
            "seed": seed,
            "rounds": args.rounds,
            "clients_per_round": args.cohort,
            "eval_every": args.eval_every,
            "optimizer": {"lr": server_lr},
            "secagg": {"enabled": secagg},
        },
    )
    model = config.run_model(catalog, split.n_users)
    checkpoints: list[dict] = []

    def measure(shared: list[np.ndarray]) -> Evaluation:
        warm = warm_metrics(model, shared, split, seed, valid_only=tuning)
        checkpoints.append({"warm": warm, "shared": [a.copy() for a in shared]})
        log(f"  {name} checkpoint {len(checkpoints)}: valid NDCG@10 {warm['valid']['ndcg@10']:.4f}")
        return Evaluation(metrics={"valid_ndcg@10": warm["valid"]["ndcg@10"]}, devices=0)

    result = run_batched(
        split,
        config.server_settings(split.n_users),
        initial=initial_shared(split.n_items, config, catalog),
        model=model,
        evaluation=measure,
    )
    rounds = [r.round for r in result.history if r.evaluate is not None]
    best = int(np.argmax([c["warm"]["valid"]["ndcg@10"] for c in checkpoints]))
    shared = checkpoints[best]["shared"]
    return {
        "model": model,
        "shared": shared,
        "warm": checkpoints[best]["warm"],
        "round": rounds[best],
        "curve": {
            r: round(c["warm"]["valid"]["ndcg@10"], 5)
            for r, c in zip(rounds, checkpoints, strict=True)
        },
        "seconds": round(result.seconds, 1),
    }


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    args.argv = argv
    torch.set_num_threads(1)
    clock = Stopwatch()
    log = clock.log
    dataset = local_dataset(args.dataset)
    catalog = release_catalog(None, dataset.catalog)  # type: ignore[arg-type]
    if args.tune:
        tune(args, dataset, catalog, log)
        return
    record = {
        "command": command("sequential.py", argv),
        "protocol": __doc__.split("\n\n", 2)[2].rsplit("\n\nWrites", 1)[0],
        "variants": {v: VARIANTS[v] for v in args.variants},
        "settings": {"max_history": args.max_history, "server_lr": args.server_lr},
        "runs": [],
    }
    for seed in args.seeds:
        proto = protocol(dataset, seed)
        split = proto["split"]
        counts = np.bincount(split.train.items, minlength=split.n_items).astype(np.float64)
        popularity = _constant(counts, seed=seed)
        run: dict = {"seed": seed, "warm": {}, "cold_users": {}, "cold_items": {}, "best": {}}
        run["warm"]["popularity"] = {
            "train": evaluate(popularity, split),
            "train + validation": evaluate(popularity, split),
        }
        run["cold_users"]["popularity (trending)"] = cold_user_metrics(popularity, proto)
        run["cold_items"]["popularity"] = cold_item_metrics(popularity, proto)
        trained = {}
        model, result = train_mf("MF (iALS)", proto, catalog, None, args, seed)
        trained["MF (iALS)"] = {
            "model": model,
            "shared": result.shared,
            "warm": warm_metrics(model, result.shared, split, seed),
            "round": args.mf_rounds,
            "seconds": round(result.seconds, 1),
        }
        for name in args.variants:
            trained[name] = train_sequential(name, VARIANTS[name], proto, catalog, args, seed, log)
        for name, got in trained.items():
            m, sh = got["model"], got["shared"]
            run["warm"][name] = got["warm"] | {"seconds": got["seconds"], "round": got["round"]}
            run["best"][name] = got.get("curve")

            def cold_users(users, histories, m=m, sh=sh, sd=seed):
                return _scores(m, sh, histories, users, None, sd)

            def cold_items(rows, m=m, sh=sh, sd=seed, sp=split):
                return _scores(m, sh, [sp.train.row(r) for r in rows], rows, None, sd)

            run["cold_users"][name] = cold_user_metrics(cold_users, proto)
            if name.startswith("MF"):  # MF at k = 0 is the device's popularity fallback
                run["cold_users"][name].pop("k=0")
            run["cold_items"][name] = cold_item_metrics(cold_items, proto)
            log(
                f"seed {seed} {name} (round {got['round']}): warm NDCG@10 "
                f"{got['warm']['train']['ndcg@10']:.4f} (train history), "
                f"{got['warm']['train + validation']['ndcg@10']:.4f} (train + validation)"
            )
        record["runs"].append(run)
        record["seconds"] = clock.seconds
        write(args, record)
    log("done")


def _mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


def write(args, record: dict) -> None:
    runs = record["runs"]
    seeds = [r["seed"] for r in runs]
    lines = [
        f"# Sequential model: {args.dataset}",
        "",
        f"Command: `{record['command']}`",
        "",
        f"Seeds {seeds}; mean ± std over seeds. {record['protocol']}",
        "",
        f"Settings: {record['settings']}; variants: {record['variants']}.",
    ]
    for history in ("train", "train + validation"):
        lines += [
            "",
            f"## Warm users and items, history: {history} (full ranking and sampled)",
            "",
            *table_head(
                "method | NDCG@10 | HR@10 | sampled NDCG@10 | sampled HR@10 | "
                "coverage@10 | round | wall s"
            ),
        ]
        for name in runs[0]["warm"]:
            got = [r["warm"][name][history] for r in runs]
            meta = [r["warm"][name] for r in runs]
            cells = [
                _mean_std([g[m] for g in got])
                for m in ("ndcg@10", "hr@10", "sampled_ndcg@10", "sampled_hr@10", "coverage@10")
            ]
            rounds = "/".join(str(m["round"]) for m in meta) if "round" in meta[0] else "—"
            wall = f"{np.mean([m['seconds'] for m in meta]):.0f}" if "seconds" in meta[0] else "—"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {rounds} | {wall} |")
    lines += cold_lines(runs, reference="popularity")
    lines += ["", "## Validation NDCG@10 by round (the reported round is the best)", ""]
    for r in runs:
        for name, curve in r["best"].items():
            if curve:
                lines.append(f"- seed {r['seed']}, {name}: {curve}")
    lines += ["", f"Wall time: {record['seconds']:.0f} s on 2 CPU cores."]
    stem = f"sequential-{args.dataset}" + (f"-{args.name}" if args.name else "")
    write_results(args.out, stem, record, lines, default=str)


if __name__ == "__main__":
    main(sys.argv[1:])
