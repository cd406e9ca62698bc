"""One complete experiment: data, split, baselines, federated run, results on disk.

``stamen simulate`` is a thin command line over ``run_experiment``; benchmarks call it too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from stamen.models import Dataset, StamenError
from stamen.simulation.baselines.scorers import (
    dp_popularity_scorer,
    mf_scorer,
    popularity_scorer,
    shared_model_scorer,
    train_centralised_mf,
)
from stamen.simulation.config import SimulationConfig
from stamen.simulation.datasets import (
    default_data_dir,
    find_local,
    generate_synthetic,
    load_dataset,
)
from stamen.simulation.engines.flower import release_catalog, run_federated
from stamen.simulation.protocol.evaluate import evaluate
from stamen.simulation.protocol.report import plot_history, print_table, wide_console, write_results
from stamen.simulation.protocol.split import leave_one_out

__all__ = [
    "ExperimentResult",
    "load_for_config",
    "privacy_section",
    "round_status",
    "run_experiment",
    "select_round",
]


@dataclass(frozen=True)
class ExperimentResult:
    """Paths written and the results record."""

    results: dict[str, Any]
    results_path: Path
    plot_path: Path


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
    )


def round_status(record: dict[str, Any]) -> str:
    """A finished round's progress line: its devices, time and NDCG@10, or why it was
    skipped or failed (a private run skips rounds whose Poisson cohort is too small)."""
    seconds = f"{record.get('seconds', 0.0):.1f}s"
    if "skipped" in record:
        return f"skipped ({record['skipped']}), {seconds}"
    status = f"{record.get('devices', 0)} devices, {seconds}"
    if "failed" in record:
        status += "  failed (see results.json)"
    ndcg = record.get("evaluate", {}).get("ndcg@10")
    if ndcg is not None:
        status += f"  NDCG@10 {ndcg:.4f}"
    return status


def load_for_config(config: SimulationConfig, *, say: Callable[[str], None]) -> tuple[Dataset, str]:
    """The configured data set and a note on where it came from. Falls back to the
    synthetic data set (and says so) when a real one is neither on disk nor downloadable."""
    if config.dataset == "synthetic":
        data = generate_synthetic(config.synthetic_users, config.synthetic_items, seed=config.seed)
        return data, "synthetic (generated)"
    root = config.data_dir if config.data_dir is not None else default_data_dir()
    local = find_local(config.dataset, root)
    if local is not None:
        return load_dataset(config.dataset, local), str(local)
    try:
        return load_dataset(config.dataset), "downloaded to the cache"
    except (OSError, StamenError) as err:
        say(
            f"[yellow]No copy of {config.dataset} under {root} and the download failed ({err}); "
            "falling back to the built-in synthetic data set.[/yellow]"
        )
        data = generate_synthetic(config.synthetic_users, config.synthetic_items, seed=config.seed)
        return data, f"synthetic fallback ({config.dataset} unavailable)"


def privacy_section(report: dict[str, Any] | None, config: SimulationConfig) -> dict[str, Any]:
    """The results JSON's ``privacy``: the strategy's (ε, δ) report (mode ``off`` and
    ε = ∞ without DP), the SecAgg+ settings, and the at-rest / release protections every
    run has (device stores encrypted, global models signed)."""
    return {
        **(report or {"mode": "off", "epsilon": float("inf"), "delta": None}),
        "secure_aggregation": config.secagg.model_dump(mode="json"),
        "encrypted_at_rest": True,
        "signed_releases": True,
    }


def _covers_all(evaluation: dict[str, Any] | None, devices: int) -> bool:
    """Whether an evaluation asked every device (a noised secure evaluation counts its
    devices only approximately, so its ``full`` flag decides)."""
    if not evaluation:
        return False
    if "full" in evaluation:
        return bool(evaluation["full"]) and "failed" not in evaluation
    return evaluation.get("devices") == devices


def select_round(
    history: list[dict[str, Any]], *, devices: int, private: bool = False
) -> dict[str, Any]:
    """The round reported: for a private run the last evaluation over all ``devices``
    evaluable devices (choosing by private validation metrics would spend privacy the
    accountant does not count); otherwise the one with the best validation NDCG@10, early
    stopping on validation as for the baseline."""
    full = [h for h in history if _covers_all(h.get("evaluate"), devices)]
    if not full:
        raise StamenError("no federated evaluation covered every device; cannot select a round")
    if private:
        return full[-1]
    return max(full, key=lambda h: (h["evaluate"].get("valid_ndcg@10", 0.0), h["round"]))


#: How ``select_round`` chose, as results.json says it.
SELECTION = {
    True: "the last evaluated round (all devices): a private run is not selected on "
    "private validation metrics",
    False: "the evaluated round with the best validation NDCG@10 (all devices)",
}


def run_experiment(
    config: SimulationConfig, *, console: Console | None = None, verbose: bool = False
) -> ExperimentResult:
    """Run the baselines and the federated simulation; write results JSON, plot, negatives."""
    console = console or wide_console()
    output = config.output
    output.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    started = time.perf_counter()
    dataset, source = load_for_config(config, say=console.print)
    split = leave_one_out(dataset.interactions, seed=config.seed)
    np.savez_compressed(output / "negatives.npz", negatives=split.negatives, seed=config.seed)
    timings["data"] = time.perf_counter() - started
    console.print(
        f"[bold]{dataset.name}[/bold] from {source}: {split.n_users} users, {split.n_items} items, "
        f"{len(dataset.interactions)} interactions; "
        f"{split.stats()['evaluated_users']} users evaluated"
    )

    methods: dict[str, dict[str, float]] = {}
    started = time.perf_counter()
    methods["popularity"] = evaluate(popularity_scorer(split), split)
    timings["popularity"] = time.perf_counter() - started

    with _progress(console) as progress:
        task = progress.add_task("centralised MF", total=config.centralised.epochs, status="")

        def on_epoch(epoch: int, loss: float, valid: float) -> None:
            progress.update(
                task, completed=epoch, status=f"loss {loss:.3f}  valid NDCG@10 {valid:.4f}"
            )

        started = time.perf_counter()
        model, info = train_centralised_mf(
            split,
            local=config.local,
            settings=config.centralised,
            seed=config.seed,
            on_epoch=on_epoch,
        )
        progress.update(task, completed=config.centralised.epochs)
    methods["centralised MF"] = evaluate(mf_scorer(model), split)
    timings["centralised"] = time.perf_counter() - started

    with _progress(console) as progress:
        task = progress.add_task(
            "federated rounds",
            total=config.server_settings(split.n_users).rounds,
            status="provisioning devices…",
        )

        def on_round(record: dict[str, Any]) -> None:
            progress.update(task, completed=record["round"], status=round_status(record))

        fed = run_federated(
            config,
            split,
            catalog=dataset.catalog,
            output=output,
            on_round=on_round,
            verbose=verbose,
        )
    timings["federated"] = fed.seconds
    if config.resume:
        console.print(f"resumed from round {fed.resumed_from} (0: no checkpoint was found)")
    private = config.dp.enabled or config.record_dp.enabled
    chosen = select_round(fed.history, devices=split.stats()["evaluated_users"], private=private)
    if fed.privacy is not None and fed.privacy["mode"] != "off":
        scorer, spent = dp_popularity_scorer(
            split, epsilon=fed.privacy["epsilon"], delta=fed.privacy["delta"], seed=config.seed
        )
        row = {"popularity": methods.pop("popularity")}
        row[f"DP popularity (ε={spent:.3g})"] = evaluate(scorer, split)
        methods = {**row, **methods}  # beside the non-private popularity row
    run_model = config.run_model(release_catalog(split, dataset.catalog), split.n_users)
    offline = evaluate(
        shared_model_scorer(fed.shared, split, model=run_model, seed=config.seed), split
    )
    federated = f"federated {run_model.display_name}"
    methods[federated] = {  # test metrics only: not the record's counts, flags or noise
        k: v
        for k, v in chosen["evaluate"].items()
        if (k == "loss" or "@" in k) and not k.startswith("valid_")
    }
    methods[federated]["coverage@10"] = offline["coverage@10"]

    print_table(
        methods,
        title=f"{dataset.name}: test metrics (full ranking; sampled = 99 negatives)",
        console=console,
    )
    ratio = methods[federated].get("ndcg@10", 0.0) / max(
        methods["centralised MF"]["ndcg@10"], 1e-12
    )
    console.print(f"federated / centralised NDCG@10: {ratio:.3f}")
    if fed.privacy is not None and fed.privacy["mode"] != "off":
        p = fed.privacy
        console.print(
            f"user-level DP ({p['mode']}): ε = {p['epsilon']:.3f} at δ = {p['delta']:.2e} "
            f"(z = {p['noise_multiplier']:.3f}, C = {p['clip_norm']}, "
            f"q = {p['sampling_rate']:.4f}, {p['rounds']} rounds, {p['accountant']})"
        )
    if config.secagg.enabled:
        sa = config.secagg
        plain = fed.privacy is None or fed.privacy["mode"] == "off"
        console.print(
            f"secure aggregation: Flower SecAgg+ ({sa.num_shares} shares, threshold "
            f"{sa.reconstruction_threshold})"
            + ("; no user-level DP, so ε = ∞ for what the cohort sum reveals" if plain else "")
        )
    if fed.privacy is not None and "record" in fed.privacy:
        r = fed.privacy["record"]
        console.print(
            f"record-level DP-SGD: ε = {r['epsilon']:.3f} at δ = {r['delta']:.2e} per record "
            f"(z = {r['noise_multiplier']:.3f}, C = {r['max_grad_norm']}, "
            f"q = {r['sample_rate']:.4f}, {r['steps_per_round']} steps × "
            f"{r['max_participations']} rounds of the most-sampled device, {r['accountant']})"
        )
    for name, a in (fed.privacy or {}).get("analytics", {}).items():
        console.print(
            f"private analytics ({name}, {a['mode']}): ε = {a['epsilon']:.3f} at "
            f"δ = {a['delta']:.2e} (z = {a['noise_multiplier']:.3f}, {a['rounds']} releases), "
            "apart from training's"
        )
    if config.secagg.enabled and config.analytics.evaluation.secure is not False:
        console.print("federated evaluation: a SecAgg+ sum (no device's metrics in the clear)")
    ranker = _ranker_section(fed.ranker)
    if ranker is not None:
        console.print(_ranker_summary(ranker))

    results = {
        "config": config.model_dump(mode="json"),
        "dataset": {"name": dataset.name, "source": source, **split.stats()},
        "protocol": {
            "split": "per-user temporal leave-one-out (seeded tie-break); "
            "validation = second-to-last",
            "full_ranking": "all items except the user's train and validation items",
            "sampled": "99 negatives per user, fixed by seed, disjoint from all the user's items",
            "negatives_file": "negatives.npz",
        },
        "seed": config.seed,
        "methods": methods,
        "centralised": info,
        "federated": {
            "algorithm": config.algorithm,
            "selected_round": chosen["round"],
            "selection": SELECTION[private],
            "rounds": fed.history,
            "resumed_from_round": fed.resumed_from,
            "offline_check": offline,
            "federated_over_centralised_ndcg@10": ratio,
        },
        "privacy": privacy_section(fed.privacy, config),
        "wall_seconds": timings,
    }
    if ranker is not None:
        results["ranker"] = ranker
    results_path = write_results(output / "results.json", results)
    plot_path = plot_history(
        output / "metrics.png",
        fed.history,
        references={k: v for k, v in methods.items() if k != federated},
        label=federated,
        title=f"{dataset.name}, seed {config.seed}",
    )
    console.print(f"results: {results_path}\nplot:    {plot_path}")
    return ExperimentResult(results=results, results_path=results_path, plot_path=plot_path)


def _ranker_section(ranked: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ranker's rounds and privacy for the results file (``None``: no ranker rounds)."""
    if ranked is None:
        return None
    return {"rounds": ranked["history"], "privacy": ranked["privacy"]}


def _ranker_summary(section: dict[str, Any]) -> str:
    """A line saying what the ranker's last round's secure evaluation measured on the
    devices' own lists, and its ε."""
    last = section["rounds"][-1]
    evaluation = last.get("evaluate", {})
    privacy = section["privacy"]
    summary = f"ranker: {len(section['rounds'])} rounds, release {last.get('release')}"
    if "ranker_ndcg@10" in evaluation:
        summary += (
            f"; on {evaluation['devices']} devices' own lists NDCG@10 "
            f"{evaluation['ranker_ndcg@10']:.4f} ranked against {evaluation['fused_ndcg@10']:.4f} "
            "as fused"
        )
    if privacy is not None and privacy.get("mode", "off") != "off":
        summary += (
            f"; ε = {privacy['epsilon']:.3f} at δ = {privacy['delta']:.2e}, apart from training's"
        )
    return summary
