"""The item-set inference attack on ML-100K: individual updates, SecAgg+ aggregates, DP.

    python benchmarks/attack.py --seeds 0 1 2 --targets 200 --cohorts 50 100

For each seed and each ``--losses`` entry (default: the project's default loss and
``softmax``; other local settings are the defaults, with ``item_l2`` resolved for the
population as a run does): the leave-one-out split; the state of the shared item side the
devices start from, ``fresh`` (the seeded initial model of round 1) or optionally
``trained`` (the item side of a centralised MF trained on all training data, a stand-in
for a late round); every device's update from that state
(``stamen.simulation.protocol.attack.device_updates``); then the attack on ``--targets`` random
devices, guessing ``k = |S|`` items:

* view (a) ``individual``: the device's own update, each score of ``attack.SCORES``, and
  the largest-gap rule (``attack.estimate_k``, no ``k`` given) on the bias score;
* view (b) ``aggregate``: the mean update of a random cohort around the target (what
  SecAgg+ reveals), against the ``popularity`` chance level (the k items most popular among
  the other users) and the ``counterfactual`` (the same cohort with the target replaced);
* view (c) ``dp``: the update clipped to C (the median norm of all devices' updates in
  that state) plus N(0, (zC)²) noise; z from Opacus' RDP accountant for ε at δ = 1/n_users
  with sampling rate q = cohort / n_users over ``--rounds`` rounds (a whole run's budget;
  ``--rounds 1`` is the stress case of a one-round budget).

Writes benchmarks/results/attack-ml-100k.json and .md (with the command).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from stamen.models import LocalSettings, MatrixFactorization, fit
from stamen.simulation.config import load_config
from stamen.simulation.datasets import load_dataset
from stamen.simulation.engines.flower import initial_shared
from stamen.simulation.protocol import attack as atk
from stamen.simulation.protocol.split import leave_one_out

HERE = Path(__file__).resolve().parent
METHODS = tuple(sorted(atk.SCORES))


def trained_shared(split, settings: LocalSettings, *, seed: int, epochs: int) -> list[np.ndarray]:
    """The item side of a centralised MF trained on the split's training data."""
    model = MatrixFactorization(
        split.n_users,
        split.n_items,
        settings.dim,
        init_std=settings.init_std,
        generator=torch.Generator().manual_seed(seed),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=0.005, weight_decay=1e-4)
    fit(
        model,
        split.train,
        loss=settings.loss_fn(),
        optimizer=optimizer,
        epochs=epochs,
        batch_size=64,
        rng=np.random.default_rng([seed, 1]),
    )
    return model.shared_arrays()


def precision(view: list[np.ndarray], truth: np.ndarray, method: str) -> np.ndarray:
    """Per-target precision of the top-|S| guess on ``view`` (recall equals it: k = |S|)."""
    guess = atk.guess_items(atk.item_scores(view, method=method), k=truth.sum(1))
    return atk.batch_attack_metrics(guess, truth)["precision"]


def run_state(split, shared, settings, *, seed: int, args: argparse.Namespace) -> dict[str, float]:
    """All figures for one seed and one starting state (means over targets)."""
    out: dict[str, float] = {}
    started = time.perf_counter()
    updates = atk.device_updates(
        shared, split.train, range(split.n_users), settings=settings, seed=seed
    )
    out["seconds_updates"] = time.perf_counter() - started
    rng = np.random.default_rng([seed, 2])
    targets = np.sort(rng.choice(split.n_users, args.targets, replace=False))
    truth = atk.truth_mask(split.train, targets)
    k = truth.sum(1)
    out["base_rate"] = float((k / split.n_items).mean())
    popular = atk.guess_items(atk.popularity_scores(split.train, targets), k=k)
    out["popularity"] = float(atk.batch_attack_metrics(popular, truth)["precision"].mean())

    individual = [a[targets] for a in updates]
    for method in METHODS:
        out[f"individual/{method}"] = float(precision(individual, truth, method).mean())
    scores = atk.item_scores(individual, method="bias")
    gap = atk.batch_attack_metrics(atk.guess_items(scores, k=atk.estimate_k(scores)), truth)
    out["individual/gap_rule/precision"] = float(gap["precision"].mean())
    out["individual/gap_rule/recall"] = float(gap["recall"].mean())

    for size in args.cohorts:
        cohorts, twins = atk.sample_cohorts(split.n_users, targets, size, rng=rng)
        aggregate = atk.cohort_aggregates(updates, cohorts)
        twin = atk.cohort_aggregates(updates, twins)
        for method in METHODS:
            out[f"aggregate{size}/{method}"] = float(precision(aggregate, truth, method).mean())
            out[f"aggregate{size}/{method}/counterfactual"] = float(
                precision(twin, truth, method).mean()
            )

    norms = np.sqrt(
        np.einsum("und,und->u", updates[0], updates[0], dtype=np.float64)
        + np.einsum("un,un->u", updates[1], updates[1], dtype=np.float64)
    )
    clip = float(np.median(norms))
    out["clip_norm"] = clip
    for size in args.cohorts:
        for rounds in args.rounds:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # Opacus: "optimal order ..."
                zs = atk.noise_multipliers(
                    args.epsilons, n_users=split.n_users, cohort=size, rounds=rounds
                )
            for eps, z in zs.items():
                view = atk.dp_views(individual, clip_norm=clip, noise_multiplier=z, rng=rng)
                key = f"dp/q{size}/T{rounds}/eps{eps:g}"
                out[f"{key}/z"] = z
                for method in METHODS:
                    out[f"{key}/{method}"] = float(precision(view, truth, method).mean())
    return out


def summarise(per_seed: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, list[float]]]:
    """Mean and standard deviation over seeds, per state and figure."""
    summary: dict[str, dict[str, list[float]]] = {}
    for state in per_seed[0]:
        summary[state] = {}
        for key in per_seed[0][state]:
            values = np.array([run[state][key] for run in per_seed])
            summary[state][key] = [float(values.mean()), float(values.std())]
    return summary


def markdown(summary, args: argparse.Namespace, command: str, meta: dict) -> str:
    """The results as Markdown tables (precision of the top-|S| guess, mean ± std)."""

    def cell(state: str, key: str) -> str:
        mean, std = summary[state][key]
        return f"{mean:.3f} ± {std:.3f}"

    lines = [
        "# Item-set inference attack on ML-100K",
        "",
        f"Command: `{command}`",
        "",
        f"Seeds {args.seeds}, {args.targets} target devices per seed, attacker given "
        "k = |S| (its true number of training items); precision of the top-k guess "
        "(= recall). Mean ± std over seeds.",
        "Local settings (per loss): "
        + "; ".join(f"`{v}`" for v in meta["local_settings"].values())
        + ".",
        "",
    ]
    for state in summary:
        s = summary[state]
        lines += [
            f"## {state.split('/')[0]} loss, shared item side `{state.split('/')[1]}`",
            "",
            f"Chance levels: base rate |S|/n_items = {cell(state, 'base_rate')}; "
            f"popularity (k most popular items among the other users) = "
            f"{cell(state, 'popularity')}.",
            "",
            "| view | " + " | ".join(METHODS) + " |",
            "|---|" + "---|" * len(METHODS),
            "| (a) individual update | "
            + " | ".join(cell(state, f"individual/{m}") for m in METHODS)
            + " |",
        ]
        for size in args.cohorts:
            lines.append(
                f"| (b) mean of cohort {size} (SecAgg+) | "
                + " | ".join(cell(state, f"aggregate{size}/{m}") for m in METHODS)
                + " |"
            )
            lines.append(
                "| (b') same, target replaced (counterfactual) | "
                + " | ".join(cell(state, f"aggregate{size}/{m}/counterfactual") for m in METHODS)
                + " |"
            )
        lines += [
            "",
            "Largest-gap rule on the bias score (no k): precision "
            f"{cell(state, 'individual/gap_rule/precision')}, recall "
            f"{cell(state, 'individual/gap_rule/recall')}.",
            "",
            f"(c) DP view: clipped to C = {cell(state, 'clip_norm')} (median update norm) "
            "plus N(0, (zC)²); z for (ε, δ = 1/n_users) at q = cohort/n_users over T rounds.",
            "",
            "| q (cohort) | T | ε | z | " + " | ".join(METHODS) + " |",
            "|---|---|---|---|" + "---|" * len(METHODS),
        ]
        for size in args.cohorts:
            for rounds in args.rounds:
                for eps in args.epsilons:
                    key = f"dp/q{size}/T{rounds}/eps{eps:g}"
                    z = s[f"{key}/z"][0]
                    lines.append(
                        f"| {size}/{meta['n_users']} | {rounds} | {eps:g} | {z:.3f} | "
                        + " | ".join(cell(state, f"{key}/{m}") for m in METHODS)
                        + " |"
                    )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    """Run the benchmark and write its JSON and Markdown results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=Path("/work/shared/data/ml-100k"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--cohorts", type=int, nargs="+", default=[50, 100])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0, math.inf])
    parser.add_argument("--rounds", type=int, nargs="+", default=[100])
    parser.add_argument("--states", nargs="+", default=["fresh"])
    parser.add_argument(
        "--losses", nargs="+", default=list(dict.fromkeys([LocalSettings().loss, "softmax"]))
    )
    parser.add_argument("--train-epochs", type=int, default=30)
    parser.add_argument("--output", type=Path, default=HERE / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    command = "python benchmarks/attack.py " + " ".join(sys.argv[1:])
    dataset = load_dataset("ml-100k", args.data_dir)
    per_seed = []
    all_settings: dict[str, dict] = {}
    started = time.perf_counter()
    for seed in args.seeds:
        split = leave_one_out(dataset.interactions, seed=seed)
        runs = {}
        for loss in args.losses:
            config = load_config(None, {"seed": seed, "local": {"loss": loss}})
            settings = config.local.for_population(split.n_users)
            all_settings[loss] = settings.model_dump()
            for state in args.states:
                if state == "fresh":
                    shared = initial_shared(split.n_items, config)
                elif state == "trained":
                    shared = trained_shared(split, settings, seed=seed, epochs=args.train_epochs)
                else:
                    raise SystemExit(f"unknown state {state!r}; choose fresh or trained")
                key = f"{loss}/{state}"
                runs[key] = run_state(split, shared, settings, seed=seed, args=args)
                print(
                    f"seed {seed} {key}: individual/bias {runs[key]['individual/bias']:.3f} "
                    f"({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
        per_seed.append(runs)
    summary = summarise(per_seed)
    meta = {
        "command": command,
        "n_users": int(split.n_users),
        "n_items": int(split.n_items),
        "local_settings": all_settings,
        "seconds": time.perf_counter() - started,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    record = {
        "meta": meta,
        "args": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "epsilons": [f"{eps:g}" for eps in args.epsilons],
        },
        "summary": summary,
        "per_seed": per_seed,
    }
    (args.output / "attack-ml-100k.json").write_text(
        json.dumps(record, indent=1, default=lambda v: str(v)) + "\n"
    )
    text = markdown(summary, args, command, meta)
    (args.output / "attack-ml-100k.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
