"""Two-tower benchmark: warm quality against federated MF, the pooled and the sequence
user tower, cold users (k onboarding items) and cold items (held out of training).

    python benchmarks/two_tower.py --dataset ml-100k --seeds 0 1 2
    python benchmarks/two_tower.py --dataset lastfm-2k --seeds 0 1 2
    python benchmarks/two_tower.py --dataset ml-100k --name context \
        --variants "two-tower, mean" "two-tower, mean + context"

Protocol, per seed: 10% of the items (uniformly among those with interactions) are *cold
items* and 10% of the users *cold users*: neither is ever trained on. Every model is
trained federatedly (the batched simulation: each device's own step, FedAdam on the mean,
plain aggregation — SecAgg+ changes the mean only by its quantisation) on the remaining
users' interactions with the remaining items, and then evaluated three ways:

- **warm**: the warm users' per-user temporal leave-one-out (``stamen.simulation.protocol.split``),
  full ranking of the test item over the whole catalogue (cold items included, as on a
  device), at the last round (the round counts were fixed beforehand);
- **cold users**: each cold user's first k warm items in time order (Last.fm-2K has no
  times: a seeded order) are its onboarding choices, and the next one is the target,
  ranked over the catalogue without the onboarding ones, for k = 0, 1, 3, 5. At k = 0
  the device falls back to trending (training popularity) and fresh (newest release
  year) lists; MF at k = 0 is that fallback, as on ``stamen.client.Device``;
- **cold items**: every warm user who interacted with a cold item gets one of
  their cold items (seeded) as the target, ranked among all cold items (their other cold
  items excluded), scored from their warm history; HR@10, NDCG@10 and AUC. Popularity
  has no signal here (every cold item has 0 training interactions: ties broken at
  random), and MF's cold rows were never a positive of anyone.

The context variant reads each event's hour of day and weekday (UTC; MovieLens-100K only,
Last.fm-2K has no times): trained on each target event's context, scored warm in the
context of the held-out event (the request it answers) and cold with the context unknown.

Writes benchmarks/results/two-tower-<dataset>[-<name>].{json,md} after every seed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from common import Stopwatch, command, local_dataset, report_head, table_head, write_results

from stamen.models.batches import UserItems
from stamen.models.metrics import full_ranks, ranking_metrics
from stamen.models.registry import DeviceInputs, device_seeds, model_class
from stamen.models.schema import Interactions
from stamen.simulation.config import load_config
from stamen.simulation.engines.batched import run_batched
from stamen.simulation.engines.flower import initial_shared, release_catalog
from stamen.simulation.protocol.evaluate import evaluate
from stamen.simulation.protocol.split import leave_one_out

HERE = Path(__file__).resolve().parent
KS = (0, 1, 3, 5)

#: name -> (model, settings of the model, whether it reads the user attributes)
VARIANTS = {
    "MF (iALS)": ("mf", {}, False),
    "two-tower, mean": ("two-tower", {}, False),
    "two-tower, sequence": ("two-tower", {"user_tower": "sequence"}, False),
    "two-tower, content only": ("two-tower", {"item_ids": False}, False),
    "two-tower, mean + attributes": ("two-tower", {}, True),
    "two-tower, mean + context": ("two-tower", {"context": True}, False),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--mf-rounds", type=int, default=250)
    parser.add_argument("--cohort", type=int, default=64)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--name", default="", help="suffix of the results files")
    return parser.parse_args(argv)


def _warm_interactions(data: Interactions, keep: np.ndarray, users: np.ndarray) -> Interactions:
    """The interactions ``keep`` of the warm ``users`` (sorted), users re-indexed densely."""
    row = np.full(data.n_users, -1, np.int64)
    row[users] = np.arange(len(users))
    return Interactions(
        user=row[data.user[keep]],
        item=data.item[keep],
        value=data.value[keep],
        timestamp=None if data.timestamp is None else data.timestamp[keep],
        user_ids=data.user_ids[users],
        item_ids=data.item_ids,
        source=data.source,
    )


def _time_order(data: Interactions, seed: int) -> np.ndarray:
    """Interaction indices by user, then time (seeded order where there are no times)."""
    tiebreak = np.random.default_rng([seed, 5]).permutation(len(data))
    if data.timestamp is None:
        return np.lexsort((tiebreak, data.user))
    return np.lexsort((tiebreak, data.timestamp, data.user))


def protocol(dataset, seed: int) -> dict:
    """The seed's cold items and users, warm training split and evaluation cases."""
    data = dataset.interactions
    rng = np.random.default_rng([seed, 77])
    touched = np.unique(data.item)
    cold_items = np.sort(rng.choice(touched, size=len(touched) // 10, replace=False))
    cold_users = np.sort(rng.choice(data.n_users, size=data.n_users // 10, replace=False))
    warm_users = np.setdiff1d(np.arange(data.n_users), cold_users)
    is_cold_item = np.isin(data.item, cold_items)
    is_cold_user = np.isin(data.user, cold_users)
    split = leave_one_out(
        _warm_interactions(data, ~is_cold_item & ~is_cold_user, warm_users), seed=seed
    )
    order = _time_order(data, seed)
    onboarding = {}
    for user in cold_users:
        rows = order[(data.user[order] == user) & ~is_cold_item[order]]
        onboarding[int(user)] = data.item[rows]
    row = {int(u): r for r, u in enumerate(warm_users)}
    cold_cases = []  # (warm row, target cold item, all their cold items)
    for user in np.unique(data.user[is_cold_item & ~is_cold_user]):
        items = data.item[is_cold_item & (data.user == user)]
        if split.train.counts()[row[int(user)]]:
            cold_cases.append((row[int(user)], int(rng.choice(items)), items))
    return {
        "split": split,
        "warm_users": warm_users,
        "cold_items": cold_items,
        "onboarding": onboarding,
        "cold_cases": cold_cases,
    }


def train(name: str, proto: dict, catalog, attributes, args, seed: int):
    """Federated training of variant ``name`` on the warm split; its last round."""
    kind, overrides, reads_attributes = VARIANTS[name]
    split = proto["split"]
    settings = dict(overrides)
    if reads_attributes:
        settings["attribute_width"] = attributes.shape[1]
    rounds = args.mf_rounds if kind == "mf" else args.rounds
    config = load_config(
        None,
        {
            "model": kind,
            model_class(kind).settings_field: settings,
            "seed": seed,
            "rounds": rounds,
            "clients_per_round": args.cohort,
            "eval_every": 0,
            "optimizer": {"lr": 0.005} if kind == "mf" else {},
            "secagg": {"enabled": False},
        },
    )
    model = config.run_model(catalog, split.n_users)
    result = run_batched(
        split,
        config.server_settings(split.n_users),
        initial=initial_shared(split.n_items, config, catalog),
        model=model,
        attributes=attributes[proto["warm_users"]] if reads_attributes else None,
    )
    return model, result


def _scores(model, shared, histories: list[np.ndarray], users, attributes, seed: int):
    """Scores ``(len(users), n_items)`` from each user's ``histories`` row (time order)."""
    indptr = np.concatenate([[0], np.cumsum([len(h) for h in histories])]).astype(np.int64)
    items = np.concatenate([*histories, np.zeros(0, np.int64)]).astype(np.int64)
    inputs = DeviceInputs(
        history=UserItems(indptr=indptr, items=items, n_items=model.n_items),
        seeds=device_seeds(np.asarray(users), seed=seed, rnd=0, purpose=2),
        attributes=None if attributes is None else attributes[np.asarray(users)],
    )
    with torch.no_grad():
        return model.for_serving().scores(shared, inputs)


def cold_user_metrics(scorer, proto) -> dict:
    """NDCG@10 / HR@10 of each cold user's next item after k onboarding items, for every
    k; ``scorer(users, histories)`` gives the scores."""
    out = {}
    for k in KS:
        cases = [
            (u, items[:k], int(items[k]))
            for u, items in proto["onboarding"].items()
            if len(items) > k
        ]
        users = [u for u, _, _ in cases]
        histories = [h for _, h, _ in cases]
        scores = scorer(users, histories)
        exclude = UserItems.from_pairs(
            np.repeat(np.arange(len(cases)), [len(h) for h in histories]),
            np.concatenate([*histories, np.zeros(0, np.int64)]).astype(np.int64),
            n_users=len(cases),
            n_items=scores.shape[1],
        )
        targets = np.array([t for _, _, t in cases])[:, None]
        ranks = full_ranks(scores, targets, exclude=exclude)[:, 0]
        metrics = {m: float(v.mean()) for m, v in ranking_metrics(ranks, ks=(10,)).items()}
        out[f"k={k}"] = metrics | {"users": len(cases)}
    return out


def cold_item_metrics(scorer, proto) -> dict:
    """HR@10 / NDCG@10 / AUC of each case's cold target among all cold items (its other
    cold items excluded); ``scorer(rows)`` scores warm rows from their training items."""
    cold = proto["cold_items"]
    column = {int(i): j for j, i in enumerate(cold)}
    cases = proto["cold_cases"]
    scores = scorer([r for r, _, _ in cases])[:, torch.from_numpy(cold)]
    targets = np.array([column[t] for _, t, _ in cases])[:, None]
    others = [
        np.array([column[int(i)] for i in items if int(i) != t], np.int64) for _, t, items in cases
    ]
    exclude = UserItems.from_pairs(
        np.repeat(np.arange(len(cases)), [len(o) for o in others]),
        np.concatenate([*others, np.zeros(0, np.int64)]),
        n_users=len(cases),
        n_items=len(cold),
    )
    ranks = full_ranks(scores, targets, exclude=exclude)[:, 0]
    metrics = {m: float(v.mean()) for m, v in ranking_metrics(ranks, ks=(10,)).items()}
    candidates = len(cold) - 1 - np.array([len(o) for o in others])
    metrics["auc"] = float(np.mean(1.0 - ranks / np.maximum(candidates, 1)))
    return metrics | {"users": len(cases), "cold_items": len(cold)}


def _constant(values: np.ndarray, *, seed: int):
    """The same scores for everyone, ties broken at random per user (seeded by the user)."""
    scores = torch.from_numpy(values.astype(np.float64))
    step = float(np.min(np.diff(np.unique(values)), initial=1.0))

    def scorer(users, *_):
        noise = np.stack(
            [np.random.default_rng([seed, 13, int(u)]).random(len(values)) for u in users]
        )
        return scores[None] + 0.5 * step * torch.from_numpy(noise)

    return scorer


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    clock = Stopwatch()
    log = clock.log
    dataset = local_dataset(args.dataset)
    catalog = release_catalog(None, dataset.catalog)  # type: ignore[arg-type]
    attributes = None if dataset.users is None else dataset.users.values
    variants = [v for v in args.variants if not (VARIANTS[v][2] and attributes is None)]
    record = {
        "command": command("two_tower.py", argv),
        "protocol": __doc__.split("\n\n", 2)[2].rsplit("\n\nWrites", 1)[0],
        "variants": {v: VARIANTS[v][:2] for v in variants},
        "runs": [],
    }
    for seed in args.seeds:
        proto = protocol(dataset, seed)
        split = proto["split"]
        counts = np.bincount(split.train.items, minlength=split.n_items).astype(np.float64)
        popularity = _constant(counts, seed=seed)  # cold items: all 0, ties at random
        run: dict = {"seed": seed, "warm": {}, "cold_users": {}, "cold_items": {}}
        run["warm"]["popularity"] = evaluate(popularity, split)
        run["cold_users"]["popularity (trending)"] = cold_user_metrics(popularity, proto)
        if dataset.catalog.year.any():  # newest release year first, popular first within it
            fresh = np.asarray(dataset.catalog.year, np.float64) + 0.5 * counts / counts.max()
            run["cold_users"]["fresh (newest year)"] = cold_user_metrics(
                _constant(fresh, seed=seed), proto
            )
        random = _constant(np.zeros(split.n_items), seed=seed)
        run["cold_items"]["random"] = cold_item_metrics(random, proto)
        run["cold_items"]["popularity"] = cold_item_metrics(popularity, proto)
        for name in variants:
            model, result = train(name, proto, catalog, attributes, args, seed)
            shared = result.shared
            last = result.history[-1].evaluate.to_json()
            run["warm"][name] = {k: v for k, v in last.items() if not k.startswith("valid_")}
            run["warm"][name]["seconds"] = round(result.seconds, 1)
            attrs = attributes if VARIANTS[name][2] else None
            warm_attrs = None if attrs is None else attrs[proto["warm_users"]]

            def cold_users(users, histories, m=model, sh=shared, a=attrs, sd=seed):
                return _scores(m, sh, histories, users, a, sd)

            def cold_items(rows, m=model, sh=shared, a=warm_attrs, sd=seed, sp=split):
                return _scores(m, sh, [sp.train.row(r) for r in rows], rows, a, sd)

            run["cold_users"][name] = cold_user_metrics(cold_users, proto)
            if VARIANTS[name][0] == "mf":  # MF at k = 0 is the device's popularity fallback
                run["cold_users"][name].pop("k=0")
            run["cold_items"][name] = cold_item_metrics(cold_items, proto)
            log(
                f"seed {seed} {name}: warm NDCG@10 {last['ndcg@10']:.4f}, cold users k=1 "
                f"{run['cold_users'][name]['k=1']['ndcg@10']:.4f}, cold items NDCG@10 "
                f"{run['cold_items'][name]['ndcg@10']:.4f} ({result.seconds:.0f} s)"
            )
        record["runs"].append(run)
        record["seconds"] = clock.seconds
        write(args, record)
    log("done")


def _mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


def cold_lines(runs: list[dict], reference: str = "random") -> list[str]:
    """The cold-users and cold-items tables of the records ``runs`` (mean ± std over
    seeds); the cold-items heading counts from method ``reference``'s record."""
    seeds = [r["seed"] for r in runs]
    lines: list[str] = []
    lines += [
        "",
        "## Cold users: NDCG@10 (HR@10) of the next item after k onboarding items",
        "",
        *table_head("method | " + " | ".join(f"k = {k}" for k in KS)),
    ]
    for name in runs[0]["cold_users"]:
        cells = []
        for k in KS:
            got = [r["cold_users"][name].get(f"k={k}") for r in runs]
            if got[0] is None:
                cells.append("—")
                continue
            cells.append(
                f"{_mean_std([g['ndcg@10'] for g in got])} "
                f"({np.mean([g['hr@10'] for g in got]):.4f})"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    first = runs[0]["cold_items"][reference]
    lines += [
        "",
        f"## Cold items: {first['cold_items']} items never trained on, "
        f"{first['users']} users (seed {seeds[0]})",
        "",
        *table_head("method | HR@10 | NDCG@10 | AUC"),
    ]
    for name in runs[0]["cold_items"]:
        got = [r["cold_items"][name] for r in runs]
        lines.append(
            f"| {name} | "
            + " | ".join(_mean_std([g[m] for g in got]) for m in ("hr@10", "ndcg@10", "auc"))
            + " |"
        )
    return lines


def write(args, record: dict) -> None:
    stem = f"two-tower-{args.dataset}" + (f"-{args.name}" if args.name else "")
    runs = record["runs"]
    seeds = [r["seed"] for r in runs]
    lines = report_head(
        f"Two-tower and cold start: {args.dataset}",
        f"Command: `{record['command']}`",
        f"Seeds {seeds}; mean ± std over seeds. {record['protocol']}",
        "## Warm users and items (full ranking, last round)",
        columns="method | NDCG@10 | HR@10 | sampled HR@10 | coverage@10 | wall s (seed mean)",
    )
    for name in runs[0]["warm"]:
        got = [r["warm"][name] for r in runs]
        wall = f"{np.mean([g['seconds'] for g in got]):.0f}" if "seconds" in got[0] else "—"
        lines.append(
            f"| {name} | "
            + " | ".join(
                _mean_std([g[m] for g in got])
                for m in ("ndcg@10", "hr@10", "sampled_hr@10", "coverage@10")
            )
            + f" | {wall} |"
        )
    lines += cold_lines(runs)
    lines += ["", f"Wall time: {record['seconds']:.0f} s on 2 CPU cores."]
    write_results(args.out, stem, record, lines, default=str)


if __name__ == "__main__":
    main(sys.argv[1:])
