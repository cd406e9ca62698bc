"""The on-device pipeline, evaluated through the Device code an app runs.

    python benchmarks/pipeline.py --dataset ml-100k --seeds 0 1 2 --config benchmarks/ml-100k.toml

Per seed: the project's split (temporal leave-one-out), federated MF trained with the
batched simulation (the config's settings, no DP), its release published and installed on
one real ``Device`` per user (``stamen.simulation.engines.devices.provision_devices``: encrypted
store, the user's training items as events). Then every user's device answers
``recommend(10)`` under each pipeline variant:

- ``retrieval``: collaborative filtering alone (``PipelineSettings.retrieval_only()``);
- ``pipeline, w, λ``: every candidate generator, weighted rank fusion with weight 1 for
  collaborative filtering and ``w`` for content and trending (``w / 2`` for fresh), the
  rules, MMR at ``λ`` over genre vectors (or, named "emb", the model's item embeddings),
  ε-greedy exploration at a rate named "explore" when above 0, over the grid
  ``--weights`` x ``--lambdas`` x ``--diversity`` x ``--explore`` (λ = 1: no MMR); the
  variant marked "chosen" is the most diverse one that keeps ≥ 97% of retrieval's
  validation NDCG@10 without lowering its validation coverage (chosen on validation,
  reported on test).

Validation lists target the validation item; test lists target the test item with the
validation item excluded (the protocol's "every item the user has not seen"). Reported:
HR@10, NDCG@10, intra-list diversity (mean pairwise 1 − cosine of the items' genre/tag
vectors), catalogue coverage (distinct items over all lists / catalogue), novelty (mean
self-information −log2 of the item's share of training users), and the single-call
``recommend`` latency p50/p99. Where the data set has interaction times (ML-100K), the
release carries private trending counts (``stamen.simulation.engines.trending``: every device's
items of the last ``--trending-window-days`` before the split's last training event, at
most ``--trending-cap`` each, released once at ``--trending-epsilon`` with δ = 1/users),
which the trending generator reads; Last.fm-2K has no times, so there it proposes
nothing.

Then the federated ranker (``--ranker-hidden``, default 0 and 16 hidden units; skipped
with ``--no-ranker``): every device records its validation item, its next event after
release 1, and builds its training example on itself (``Device.ranking_example``); the
ranker is trained over all devices' examples by the batched simulation's federated
averaging (``stamen.simulation.engines.ranker``: ``--ranker-rounds`` rounds of
``--ranker-cohort`` devices, FedAvg at ``--ranker-server-lr``, SecAgg+ quantisation,
user-level DP at ``--ranker-epsilon`` if given), published in release 2 (3, …) and
installed on every device, which answers the test list again under retrieval alone, the
ranker over retrieval's candidates, and the ranker in the full pipeline at each ``λ``
and ``--diversity`` (the validation item is now in every history, so retrieval is
re-measured there).
Writes benchmarks/results/pipeline-<dataset>[-<tag>].{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from common import local_path
from scipy import sparse

from stamen.client.pipeline.candidates import ReleaseIndex
from stamen.client.pipeline.recommend import PipelineSettings
from stamen.models.ranker.settings import RankerSettings
from stamen.privacy import generate_key, generate_signing_key
from stamen.server.releases import ReleaseWriter
from stamen.server.settings import ServerSettings
from stamen.simulation.config import load_config
from stamen.simulation.datasets import load_dataset
from stamen.simulation.engines.batched import run_batched
from stamen.simulation.engines.devices import provision_devices
from stamen.simulation.engines.flower import initial_shared, release_catalog
from stamen.simulation.engines.ranker import gather_examples, train_ranker
from stamen.simulation.engines.trending import private_trending, true_trending
from stamen.simulation.protocol.split import leave_one_out

HERE = Path(__file__).resolve().parent
KEEP = 0.97  # of retrieval's validation NDCG@10


def _variants(
    weights: list[float],
    lambdas: list[float],
    diversity: Sequence[str] = ("genres",),
    explore: Sequence[float] = (0.0,),
) -> dict[str, PipelineSettings]:
    """Retrieval alone, then every generator with the non-CF lists' fusion weight ``w``
    (content, trending; fresh at w / 2), MMR's ``λ`` over what MMR compares (genre
    vectors, or the model's item embeddings: named "emb") and the exploration rate
    (named when above 0) over the grid."""
    out = {"retrieval": PipelineSettings.retrieval_only()}
    for what in diversity:
        for rate in explore:
            for w in weights:
                fused = {"cf": 1.0, "content": w, "trending": w, "fresh": w / 2, "popular": 1.0}
                for lam in lambdas:
                    if what == "embeddings" and lam == 1 and "genres" in diversity:
                        continue  # λ = 1 compares nothing: the genres row is the same list
                    name = f"pipeline, w={w:g}, λ={lam:g}"
                    name += ", emb" if what == "embeddings" and lam < 1 else ""
                    name += f", explore={rate:g}" if rate else ""
                    out[name] = PipelineSettings(
                        weights=fused,
                        mmr_lambda=lam,
                        ranker=False,
                        diversity=what,
                        explore=rate,
                    )
    return out


def _ranker_variants(lambdas: list[float], hidden: int, first: bool, diversity: list[str]) -> dict:
    """Retrieval alone (``first``: once), the federated ranker of ``hidden`` units over
    retrieval's candidates, and over every generator's at each MMR ``λ`` over each of
    ``diversity`` (genres; embeddings: named "emb")."""
    retrieval = PipelineSettings.retrieval_only()
    out = {"retrieval": retrieval} if first else {}
    out[f"retrieval + ranker h={hidden}"] = retrieval.model_copy(update={"ranker": True})
    for what in diversity:
        for lam in lambdas:
            if what == "embeddings" and lam == 1:
                continue  # λ = 1 compares nothing: the genres row is the same list
            name = f"pipeline, ranker h={hidden}, λ={lam:g}" + (", emb" if what != "genres" else "")
            out[name] = PipelineSettings(mmr_lambda=lam, diversity=what)
    return out


def _list_metrics(lists, targets, unit_genres, info) -> dict[str, float]:
    hits, gains, ild, novelty = [], [], [], []
    for rows, target in zip(lists, targets, strict=True):
        position = np.flatnonzero(rows == target)
        hits.append(float(len(position) > 0))
        gains.append(1.0 / np.log2(position[0] + 2) if len(position) else 0.0)
        vectors = unit_genres[rows].toarray()
        if len(rows) > 1:
            sims = vectors @ vectors.T
            pairs = len(rows) * (len(rows) - 1)
            ild.append(float((pairs - (sims.sum() - np.trace(sims))) / pairs))
        novelty.append(float(info[rows].mean()))
    n_items = unit_genres.shape[0]
    return {
        "hr@10": float(np.mean(hits)),
        "ndcg@10": float(np.mean(gains)),
        "ild@10": float(np.mean(ild)),
        "coverage@10": len(np.unique(np.concatenate(lists))) / n_items,
        "novelty@10": float(np.mean(novelty)),
    }


def _ranker_examples(split, catalog, provisioned) -> tuple:
    """Each device records its validation item (the person's next event after release 1)
    and builds its example from it (``Device.ranking_example``: the list release 1
    offers for its training history, the validation item taken)."""
    tick = time.perf_counter()
    pairs = []
    for row in range(split.n_users):
        with provisioned.devices.open(row) as device:
            if split.valid[row, 0] < 0:
                pairs.append(None)  # nothing new to learn from: sends weight decay only
                continue
            times = device.history_times()
            at = float(times.max()) + 1.0 if len(times) else 0.0
            device.record(catalog.item_id(int(split.valid[row, 0])), "view", at=at)
            pairs.append(device.ranking_example(recent=1))
    examples, has = gather_examples(pairs)
    return examples, has, time.perf_counter() - tick


def _train_ranker(gathered: tuple, seed: int, ranker: dict, hidden: int) -> tuple[list, dict]:
    """The ranker trained federatedly over every device's example
    (``stamen.simulation.engines.ranker``)."""
    examples, has, gathered_s = gathered
    dp = {"mode": "off"}
    if ranker["epsilon"] is not None:
        dp = {"mode": "distributed", "target_epsilon": ranker["epsilon"], "clip_norm": 0.5}
    settings = ServerSettings(
        rounds=ranker["rounds"],
        clients_per_round=ranker["cohort"],
        seed=seed,
        evaluate=False,
        optimizer={"name": "fedavg", "lr": ranker["server_lr"]},
        dp=dp,
    )
    run = train_ranker(examples, settings, RankerSettings(hidden=hidden))
    info = {
        "devices_with_example": int(has.sum()),
        "mean_list_length": float(examples.offered.sum(1)[has].mean()),
        "loss_before": run.loss_before,
        "loss_after": run.loss_after,
        "examples_seconds": gathered_s,
        "train_seconds": run.result.seconds,
        "privacy": run.result.privacy,
        "settings": settings.model_dump(include={"rounds", "clients_per_round", "dp"}),
    }
    print(f"  seed {seed} ranker h={hidden}: {info}", flush=True)
    return run.weights, info


def run_seed(
    name: str,
    path: Path,
    config_path: Path | None,
    seed: int,
    grid: dict,
    trending: dict,
    ranker: dict | None,
) -> dict:
    data = load_dataset(name, path)
    split = leave_one_out(data.interactions, seed=seed)
    config = load_config(config_path, {"seed": seed, "dataset": name})
    catalog = release_catalog(split, data.catalog)
    model = config.run_model(catalog, split.n_users)
    settings = config.server_settings(split.n_users)
    started = time.perf_counter()
    trained = run_batched(
        split, settings, initial=initial_shared(split.n_items, config, catalog), model=model
    )
    train_s = time.perf_counter() - started
    evaluated = split.evaluated.tolist()
    counts = np.bincount(split.train.items, minlength=split.n_items)
    info = -np.log2(np.maximum(counts, 1) / split.n_users)
    index = ReleaseIndex(catalog, np.zeros(len(catalog)), None)  # its genre matrix
    unit = sparse.diags(1.0 / np.maximum(index.norms, 1e-12)) @ index.genres  # unit rows
    out: dict = {"seed": seed, "train_seconds": train_s, "users": len(evaluated), "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        private, public = generate_signing_key()
        writer = ReleaseWriter(
            Path(tmp) / "releases", private_key=private, public_key=public, model=model
        )
        counts = None
        if split.train_times is not None:
            true, _ = true_trending(split, window_days=trending["window_days"], cap=trending["cap"])
            counts, out["trending"] = private_trending(
                true,
                epsilon=trending["epsilon"],
                users=split.n_users,
                cap=trending["cap"],
                seed=seed,
            )
        release = writer.publish(1, trained.shared, trending=counts)
        provisioned = provision_devices(
            split,
            writer.catalog,
            Path(tmp),
            master_key=generate_key(),
            release_key=public,
            release=release,
        )
        out["variants"] = _ask(
            provisioned, evaluated, grid, ("valid", "test"), split, catalog, unit, info
        )
        if ranker is not None:
            examples = _ranker_examples(split, catalog, provisioned)
            out["ranker"], out["ranker_variants"] = {}, {}
            for number, hidden in enumerate(ranker["hidden"], start=2):
                weights, out["ranker"][f"h={hidden}"] = _train_ranker(
                    examples, seed, ranker, hidden
                )
                release = writer.publish(number, trained.shared, trending=counts, ranker=weights)
                variants = _ranker_variants(
                    ranker["lambdas"], hidden, number == 2, ranker["diversity"]
                )
                asked = _ask(
                    provisioned,
                    evaluated,
                    variants,
                    ("test",),
                    split,
                    catalog,
                    unit,
                    info,
                    release=release,
                )
                out["ranker_variants"].update(asked)
    return out


def _ask(provisioned, rows, variants, stages, split, catalog, unit, info, release=None) -> dict:
    """Every device of ``rows`` (after installing ``release``, if given) answers
    ``recommend(10)`` under each variant, at the time just after its latest event (the
    replayed data's time, not today's: item ages, launch windows). A validation list
    targets the validation item; a test list the test item, with the validation item
    excluded (it is in the device's history once the device has recorded it)."""
    lists = {(v, stage): [] for v in variants for stage in stages}
    seconds = {key: [] for key in lists}
    for row in rows:  # each device opened once, asked under every variant
        with provisioned.devices.open(row) as device:
            if release is not None:
                device.apply_release(release, link=True)
            times = device.history_times()
            at = float(times.max()) + 1.0 if len(times) else None
            for variant, pipeline in variants.items():
                device.pipeline = pipeline
                for stage in stages:
                    valid = catalog.item_id(int(split.valid[row, 0]))
                    exclude = [] if stage == "valid" else [valid]
                    tick = time.perf_counter()
                    recs = device.recommend(10, exclude=exclude, at=at)
                    seconds[variant, stage].append(time.perf_counter() - tick)
                    lists[variant, stage].append(catalog.index_of([r.item for r in recs]))
    out = {}
    for variant in variants:
        record: dict = {}
        for stage in stages:
            targets = (split.valid if stage == "valid" else split.test)[:, 0]
            metrics = _list_metrics(lists[variant, stage], targets[rows], unit, info)
            metrics["p50_ms"] = float(np.percentile(seconds[variant, stage], 50) * 1e3)
            metrics["p99_ms"] = float(np.percentile(seconds[variant, stage], 99) * 1e3)
            record[stage] = metrics
        out[variant] = record
        print(f"  {variant}: test {record['test']}", flush=True)
    return out


def _chosen(per_seed: list[dict]) -> str | None:
    """The pipeline variant with the largest validation diversity (ILD) among those that
    keep KEEP of retrieval's validation NDCG@10 and do not lower its validation coverage
    (means over seeds)."""

    def mean(variant: str, metric: str) -> float:
        return float(np.mean([s["variants"][variant]["valid"][metric] for s in per_seed]))

    floor = KEEP * mean("retrieval", "ndcg@10")
    coverage = mean("retrieval", "coverage@10")
    ok = [
        v
        for v in per_seed[0]["variants"]
        if v != "retrieval" and mean(v, "ndcg@10") >= floor and mean(v, "coverage@10") >= coverage
    ]
    return max(ok, key=lambda v: mean(v, "ild@10")) if ok else None


def _trending_note(trending: dict | None) -> str:
    if trending is None:
        return "No trending counts in the releases (the data set has no interaction times)."
    return (
        f"The releases carry private trending counts (ε = {trending['epsilon']:g}, "
        f"δ = {trending['delta']:.2e}, z = {trending['noise_multiplier']:.3g}, noise std "
        f"{trending['noise_std']:.3g} counts)."
    )


def write(args: argparse.Namespace, per_seed: list[dict]) -> None:
    command = "python benchmarks/pipeline.py " + " ".join(sys.argv[1:])
    chosen = _chosen(per_seed)
    variants = list(per_seed[0]["variants"])
    metrics = ("hr@10", "ndcg@10", "ild@10", "coverage@10", "novelty@10", "p50_ms", "p99_ms")
    lines = [
        f"# On-device pipeline: {args.dataset}",
        "",
        f"Command: `{command}`",
        "",
        f"Seeds {args.seeds}; {per_seed[0]['users']} users; test lists, mean ± std over seeds; "
        "every list is one `Device.recommend(10)` on the user's own device (single-threaded "
        "numpy; the latencies are as clean as the machine was idle). MMR compares genre "
        "vectors (variants named emb: the model's item embeddings); explore: ε-greedy "
        "exploration's rate per slot. "
        "The variant marked chosen is picked on validation: the most diverse (ILD) one "
        f"keeping {KEEP:.0%} of retrieval's validation NDCG@10 without lowering its "
        f"validation coverage ({chosen or 'none did'}). "
        + _trending_note(per_seed[0].get("trending")),
        "",
        "| variant | " + " | ".join(metrics) + " | NDCG vs retrieval |",
        "|---|" + "---|" * (len(metrics) + 1),
    ]
    base = np.mean([s["variants"]["retrieval"]["test"]["ndcg@10"] for s in per_seed])
    for variant in variants:
        cells = []
        for metric in metrics:
            values = [s["variants"][variant]["test"][metric] for s in per_seed]
            cells.append(
                f"{np.mean(values):.4f} ± {np.std(values):.4f}"
                if "ms" not in metric
                else f"{np.mean(values):.2f}"
            )
        ratio = np.mean([s["variants"][variant]["test"]["ndcg@10"] for s in per_seed]) / base
        mark = " (chosen)" if variant == chosen else ""
        lines.append(f"| {variant}{mark} | " + " | ".join(cells) + f" | {ratio:.3f} |")
    lines += [
        "",
        f"Training (batched, per seed): {np.mean([s['train_seconds'] for s in per_seed]):.0f} s.",
    ]
    if "ranker" in per_seed[0]:
        lines += _ranker_lines(per_seed, metrics)
    out = HERE / "results"
    suffix = f"-{args.tag}" if args.tag else ""
    (out / f"pipeline-{args.dataset}{suffix}.json").write_text(
        json.dumps({"command": command, "chosen": chosen, "seeds": per_seed}, indent=2)
    )
    (out / f"pipeline-{args.dataset}{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _ranker_lines(per_seed: list[dict], metrics: tuple[str, ...]) -> list[str]:
    """The ranker's table: after each device recorded its validation event and learned
    from it, test lists (the validation item now in the history)."""
    first = per_seed[0]["ranker"]
    info = next(iter(first.values()))
    had = np.mean([next(iter(s["ranker"].values()))["devices_with_example"] for s in per_seed])
    rounds, cohort = info["settings"]["rounds"], info["settings"]["clients_per_round"]
    lines = [
        "",
        "## The federated ranker",
        "",
        "Each device records its validation item (its next event after release 1) and "
        "builds its training example on itself (`Device.ranking_example`: the head of the "
        "candidate list release 1 offers for its training history, the validation item "
        f"taken; {had:.0f} "
        f"devices had it in their list, mean list {info['mean_list_length']:.0f} "
        "candidates). The ranker is trained over them by the batched simulation's federated "
        f"averaging ({rounds} rounds of {cohort} "
        f"devices, FedAvg, SecAgg+ quantisation, DP {info['settings']['dp']['mode']}), "
        "starting from the retrieval order (`stamen.models.ranker.weights.PRIOR`); its release "
        "goes to every device; test lists (the validation item now in each history, so "
        "retrieval is re-measured here). h: hidden units (0: logistic regression).",
        "",
        "| ranker | listwise loss before → after (training lists) | train s |",
        "|---|---|---|",
    ]
    for key in first:
        before = [s["ranker"][key]["loss_before"] for s in per_seed]
        after = [s["ranker"][key]["loss_after"] for s in per_seed]
        train = [s["ranker"][key]["train_seconds"] for s in per_seed]
        lines.append(
            f"| {key} | {np.mean(before):.4f} → {np.mean(after):.4f} | {np.mean(train):.1f} |"
        )
    lines += [
        "",
        "| variant | " + " | ".join(metrics) + " | NDCG vs retrieval |",
        "|---|" + "---|" * (len(metrics) + 1),
    ]
    base = np.mean([s["ranker_variants"]["retrieval"]["test"]["ndcg@10"] for s in per_seed])
    for variant in per_seed[0]["ranker_variants"]:
        rows = [s["ranker_variants"][variant]["test"] for s in per_seed]
        cells = [
            f"{np.mean([r[m] for r in rows]):.4f} ± {np.std([r[m] for r in rows]):.4f}"
            if "ms" not in m
            else f"{np.mean([r[m] for r in rows]):.2f}"
            for m in metrics
        ]
        ratio = np.mean([r["ndcg@10"] for r in rows]) / base
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {ratio:.3f} |")
    return lines


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.1, 0.25])
    parser.add_argument("--lambdas", type=float, nargs="+", default=[1.0, 0.9, 0.8, 0.7, 0.5])
    parser.add_argument(
        "--diversity",
        nargs="+",
        choices=["genres", "embeddings"],
        default=["genres"],
        help="what MMR compares (PipelineSettings.diversity)",
    )
    parser.add_argument(
        "--explore", type=float, nargs="+", default=[0.0], help="ε-greedy rates per slot"
    )
    parser.add_argument(
        "--tag", default="", help="results go to pipeline-<dataset>[-<tag>].{json,md}"
    )
    parser.add_argument("--trending-epsilon", type=float, default=4.0)
    parser.add_argument("--trending-window-days", type=float, default=30.0)
    parser.add_argument("--trending-cap", type=int, default=20)
    parser.add_argument("--no-ranker", action="store_true", help="skip the ranker rows")
    parser.add_argument("--ranker-rounds", type=int, default=300)
    parser.add_argument("--ranker-cohort", type=int, default=64)
    parser.add_argument("--ranker-hidden", type=int, nargs="+", default=[0, 16])
    parser.add_argument("--ranker-server-lr", type=float, default=1.0, help="FedAvg's")
    parser.add_argument(
        "--ranker-epsilon", type=float, default=None, help="user-level DP (default: none)"
    )
    args = parser.parse_args(argv)
    ranker = None
    if not args.no_ranker:
        ranker = {
            "rounds": args.ranker_rounds,
            "cohort": args.ranker_cohort,
            "hidden": args.ranker_hidden,
            "server_lr": args.ranker_server_lr,
            "lambdas": args.lambdas,
            "diversity": args.diversity,
            "epsilon": args.ranker_epsilon,
        }
    trending = {
        "epsilon": args.trending_epsilon,
        "window_days": args.trending_window_days,
        "cap": args.trending_cap,
    }
    path = local_path(args.dataset)
    grid = _variants(args.weights, args.lambdas, args.diversity, args.explore)
    per_seed = [
        run_seed(args.dataset, path, args.config, s, grid, trending, ranker) for s in args.seeds
    ]
    write(args, per_seed)


if __name__ == "__main__":
    main(sys.argv[1:])
