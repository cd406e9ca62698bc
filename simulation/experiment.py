"""One complete experiment: data, split, baselines, federated run, results on disk.

``stamen simulate`` is a thin command line over ``run_experiment``; benchmarks call it too.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from stamen.models import Dataset, StamenError
from stamen.server.rounds import Evaluation, RoundRecord
from stamen.simulation.baselines.reference import REFERENCE_MODELS, train_centralised_reference
from stamen.simulation.baselines.scorers import (
    dp_popularity_scorer,
    mf_scorer,
    popularity_scorer,
    shared_model_scorer,
    train_centralised_mf,
)
from stamen.simulation.config import DEFAULT_DATASET, ProtocolSettings, SimulationConfig
from stamen.simulation.datasets import (
    FileReport,
    default_data_dir,
    generate_synthetic,
    load_dataset,
    load_interactions_file,
    locate,
)
from stamen.simulation.engines.flower import release_catalog
from stamen.simulation.engines.registry import ENGINES
from stamen.simulation.protocol.evaluate import evaluate
from stamen.simulation.protocol.report import plot_history, print_table, wide_console, write_results

__all__ = [
    "ExperimentResult",
    "LoadedData",
    "load_data",
    "load_for_config",
    "privacy_section",
    "round_line",
    "round_progress",
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


def round_status(record: RoundRecord) -> str:
    """A finished round's progress line: its devices, time and NDCG@10, or why it was
    skipped or failed (a private run skips rounds whose Poisson cohort is too small)."""
    seconds = f"{record.seconds or 0.0:.1f}s"
    if record.skipped is not None:
        return f"skipped ({record.skipped}), {seconds}"
    status = f"{record.devices or 0} devices, {seconds}"
    if record.failed is not None:
        status += "  failed (see results.json)"
    ndcg = None if record.evaluate is None else record.evaluate.metrics.get("ndcg@10")
    if ndcg is not None:
        status += f"  NDCG@10 {ndcg:.4f}"
    return status


#: Metrics a plain progress line shows, with their labels.
_LINE_METRICS = {"ndcg@10": "NDCG@10", "hr@10": "HR@10"}


def round_line(record: RoundRecord, *, rounds: int) -> str:
    """A finished round as one plain line, for a console that is not a terminal (a log
    file, a pipe, a CI job): round of ``rounds``, cohort, time, the ε spent so far under
    DP, the metrics of an evaluation; or why the round was skipped or failed."""
    head = f"round {record.round}/{rounds}:"
    seconds = f"{record.seconds or 0.0:.1f} s"
    if record.skipped is not None:
        return f"{head} skipped ({record.skipped}), {seconds}"
    cohort = "?" if record.cohort is None else record.cohort
    parts = [f"cohort {cohort}", f"{record.devices or 0} aggregated", seconds]
    if record.privacy is not None:
        parts.append(f"ε {record.privacy.epsilon:.3f}")
    if record.record_privacy is not None:
        parts.append(f"record-level ε {record.record_privacy.epsilon:.3f}")
    if record.failed is not None:
        parts.append("failed (see results.json)")
    evaluation = record.evaluate
    if evaluation is not None:
        metrics = evaluation.metrics
        shown = [f"{label} {metrics[k]:.4f}" for k, label in _LINE_METRICS.items() if k in metrics]
        if shown:
            parts.append(" ".join(shown))
        elif evaluation.failed is not None or evaluation.skipped is not None:
            parts.append(f"evaluation {evaluation.failed or evaluation.skipped}")
    return f"{head} {', '.join(parts)}"


@contextmanager
def round_progress(
    console: Console, *, rounds: int, description: str = "federated rounds"
) -> Iterator[Callable[[RoundRecord], None]]:
    """A callback that reports each finished round of ``rounds``: a progress bar on a
    terminal; elsewhere (output to a file or a pipe, where a bar only shows once the
    stage ends) one plain line per round (:func:`round_line`) as it finishes."""
    if not console.is_terminal:
        console.print(f"{description}: {rounds} rounds", markup=False, highlight=False)

        def line(record: RoundRecord) -> None:
            console.print(round_line(record, rounds=rounds), markup=False, highlight=False)

        yield line
        return
    with _progress(console) as progress:
        task = progress.add_task(description, total=rounds, status="provisioning devices…")

        def update(record: RoundRecord) -> None:
            progress.update(task, completed=record.round, status=round_status(record))

        yield update


@dataclass(frozen=True)
class LoadedData:
    """The run's data set, where it came from, and a data file's report (``None`` for a
    named or generated data set)."""

    dataset: Dataset
    source: str
    report: FileReport | None = None


def load_data(config: SimulationConfig, *, say: Callable[[str], None]) -> LoadedData:
    """The data the config asks for, and nothing else: a ``[data]`` file
    (``load_interactions_file``), the generated set when ``dataset`` is ``synthetic``, or
    a named set from the data dir or the download cache (``locate``, which ``say``s when
    it downloads). A named set that is in neither and cannot be fetched is a
    ``DataError`` saying where it looked and what to do."""
    if config.data.path is not None:
        loaded = load_interactions_file(config.data)
        return LoadedData(loaded.dataset, loaded.report.path, loaded.report)
    name = config.dataset or DEFAULT_DATASET
    if name == "synthetic":
        data = generate_synthetic(config.synthetic_users, config.synthetic_items, seed=config.seed)
        return LoadedData(data, "synthetic (generated)")
    root = config.data_dir if config.data_dir is not None else default_data_dir()
    folder = locate(name, root, say=say)
    return LoadedData(load_dataset(name, folder), str(folder))


def load_for_config(config: SimulationConfig, *, say: Callable[[str], None]) -> tuple[Dataset, str]:
    """``load_data``'s data set and source."""
    loaded = load_data(config, say=say)
    return loaded.dataset, loaded.source


def privacy_section(report: dict[str, Any] | None, config: SimulationConfig) -> dict[str, Any]:
    """The results JSON's ``privacy``: the strategy's (ε, δ) report (without DP: mode
    ``off`` and ``epsilon`` ``null``, meaning no finite guarantee, ε = ∞), the SecAgg+
    settings, and the at-rest / release protections every run has (device stores
    encrypted, global models signed)."""
    return {
        **(report or {"mode": "off", "epsilon": None, "delta": None}),
        "secure_aggregation": config.secagg.model_dump(mode="json"),
        "encrypted_at_rest": True,
        "signed_releases": True,
    }


def _covers_all(evaluation: Evaluation | None, devices: int) -> bool:
    """Whether an evaluation asked every device (a noised secure evaluation counts its
    devices only approximately, so its ``full`` flag decides)."""
    if evaluation is None:
        return False
    if evaluation.full is not None:
        return evaluation.full and evaluation.failed is None
    return evaluation.devices == devices


def select_round(history: list[RoundRecord], *, devices: int, private: bool = False) -> RoundRecord:
    """The round reported: for a private run the last evaluation over all ``devices``
    evaluable devices (choosing by private validation metrics would spend privacy the
    accountant does not count); otherwise the one with the best validation NDCG@10, early
    stopping on validation as for the baseline."""
    full = [h for h in history if _covers_all(h.evaluate, devices)]
    if not full:
        raise StamenError("no federated evaluation covered every device; cannot select a round")
    if private:
        return full[-1]
    return max(full, key=lambda h: (_metrics(h).get("valid_ndcg@10", 0.0), h.round))


def _metrics(record: RoundRecord) -> dict[str, float]:
    """The metrics of a round's evaluation (none when it did not evaluate)."""
    return {} if record.evaluate is None else record.evaluate.metrics


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
    timings: dict[str, float] = {}

    started = time.perf_counter()
    loaded = load_data(config, say=console.print)  # before output exists: a bad file leaves none
    dataset, source = loaded.dataset, loaded.source
    for line in [] if loaded.report is None else loaded.report.lines():
        console.print(f"{dataset.name}: {line}", markup=False, highlight=False)
    split = config.split(dataset.interactions)
    output.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(output / "negatives.npz", negatives=split.negatives, seed=config.seed)
    timings["data"] = time.perf_counter() - started
    console.print(
        f"[bold]{dataset.name}[/bold] from {source}: {split.n_users} users, {split.n_items} items, "
        f"{len(dataset.interactions)} interactions; "
        f"{split.stats()['evaluated_users']} users evaluated"
    )
    adjustments = config.adjustments(
        devices=split.n_users, evaluated=split.stats()["evaluated_users"]
    )
    for adjustment in adjustments:
        console.print(f"warning: adjusted {adjustment}", style="yellow", markup=False)

    methods: dict[str, dict[str, float]] = {}
    started = time.perf_counter()
    cutoffs = config.protocol.cutoffs
    methods["popularity"] = evaluate(popularity_scorer(split), split, ks=cutoffs)
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
    methods["centralised MF"] = evaluate(mf_scorer(model), split, ks=cutoffs)
    timings["centralised"] = time.perf_counter() - started
    baseline, reference = "centralised MF", None
    if config.model in REFERENCE_MODELS:  # its own family's reference beside centralised MF
        started = time.perf_counter()
        catalog = release_catalog(split, dataset.catalog)
        baseline = f"centralised {config.run_model(catalog, split.n_users).display_name}"
        rounds = config.centralised.rounds or config.rounds
        with round_progress(console, rounds=rounds, description=baseline) as on_reference:
            scorer, reference = train_centralised_reference(
                config, split, catalog, on_round=on_reference
            )
        methods[baseline] = evaluate(scorer, split, ks=cutoffs)
        timings["centralised_reference"] = time.perf_counter() - started

    rounds = config.server_settings(split.n_users).rounds
    engine = ENGINES[config.engine]
    with round_progress(console, rounds=rounds) as on_round:
        fed = engine.run(
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
        row[f"DP popularity (ε={spent:.3g})"] = evaluate(scorer, split, ks=cutoffs)
        methods = {**row, **methods}  # beside the non-private popularity row
    run_model = config.run_model(release_catalog(split, dataset.catalog), split.n_users)
    offline = evaluate(
        shared_model_scorer(fed.shared, split, model=run_model, seed=config.seed),
        split,
        ks=cutoffs,
    )
    federated = f"federated {run_model.display_name}"
    methods[federated] = {  # test metrics only: not the record's counts, flags or noise
        k: v
        for k, v in _metrics(chosen).items()
        if (k in ("loss", "mrr") or "@" in k) and not k.startswith("valid_")
    }
    coverage = f"coverage@{min(cutoffs)}"  # the offline evaluation's, at the first cut-off
    methods[federated][coverage] = offline[coverage]

    negatives = config.protocol.negatives
    print_table(
        methods,
        title=f"{dataset.name}: test metrics (full ranking; sampled = {negatives} negatives)",
        console=console,
        negatives=negatives,
        cutoffs=cutoffs,
    )
    ratio = methods[federated].get("ndcg@10", 0.0) / max(methods[baseline]["ndcg@10"], 1e-12)
    console.print(f"{federated} / {baseline} NDCG@10: {ratio:.3f}")
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
        template = engine.secure_aggregation
        if config.algorithm == "als" and engine.als_aggregation is not None:
            template = engine.als_aggregation
        console.print(
            "secure aggregation: "
            + template.format(
                **{
                    **sa.model_dump(),
                    "clipping_range": "(derived: C, plus room for noise shares; 1 without DP)"
                    if sa.clipping_range is None
                    else sa.clipping_range,
                }
            )
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
        console.print(f"federated evaluation: {engine.secure_evaluation}")
    ranker = _ranker_section(fed.ranker)
    if fed.ranker is not None:
        console.print(_ranker_summary(fed.ranker))

    results = {
        "config": config.model_dump(mode="json"),
        "dataset": {
            "name": dataset.name,
            "source": source,
            **split.stats(),
            **({} if loaded.report is None else {"file": loaded.report.as_dict()}),
        },
        "adjustments": [dataclasses.asdict(a) for a in adjustments],
        "protocol": {
            **config.protocol.model_dump(mode="json"),
            "split": _split_rule(config.protocol, timed=dataset.interactions.timestamp is not None),
            "full_ranking": "all items except the user's train and validation items",
            "sampled": f"{config.protocol.negatives} negatives per user, fixed by seed, "
            "disjoint from all the user's items",
            "negatives_file": "negatives.npz",
        },
        "seed": config.seed,
        "engine": config.engine,
        "methods": methods,
        "centralised": info if reference is None else {**info, "reference": reference},
        "federated": {
            "algorithm": config.algorithm,
            "selected_round": chosen.round,
            "selection": SELECTION[private],
            "rounds": [record.to_json() for record in fed.history],
            "resumed_from_round": fed.resumed_from,
            "offline_check": offline,
            "federated_over_centralised_ndcg@10": ratio,
            "centralised_baseline": baseline,
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


def _split_rule(protocol: ProtocolSettings, *, timed: bool) -> str:
    """The split's rule in words, as ``results.json`` records it."""
    temporal = protocol.holdout == "temporal" and timed
    if protocol.split == "ratio":
        kind = (
            "temporal ratio split (seeded tie-break)"
            if temporal
            else "ratio split in a seeded random order"
        )
        return (
            f"per-user {kind}; test = the last ceil({protocol.test_ratio} × n) "
            "of a user's n items, validation = as many before them, at most (n - 1) // 2 each"
        )
    return (
        "per-user temporal leave-one-out (seeded tie-break)"
        if temporal
        else "per-user leave-one-out in a seeded random order"
    ) + "; validation = second-to-last"


def _ranker_section(ranked: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ranker's rounds and privacy for the results file (``None``: no ranker rounds)."""
    if ranked is None:
        return None
    return {
        "rounds": [record.to_json() for record in ranked["history"]],
        "privacy": ranked["privacy"],
    }


def _ranker_summary(ranked: dict[str, Any]) -> str:
    """A line saying what the ranker's last round's secure evaluation measured on the
    devices' own lists, and its ε."""
    history: list[RoundRecord] = ranked["history"]
    last = history[-1]
    privacy = ranked["privacy"]
    summary = f"ranker: {len(history)} rounds, release {last.release}"
    evaluation = last.evaluate
    if evaluation is not None and "ranker_ndcg@10" in evaluation.metrics:
        metrics = evaluation.metrics
        summary += (
            f"; on {evaluation.devices} devices' own lists NDCG@10 "
            f"{metrics['ranker_ndcg@10']:.4f} ranked against {metrics['fused_ndcg@10']:.4f} "
            "as fused"
        )
    if privacy is not None and privacy.get("mode", "off") != "off":
        summary += (
            f"; ε = {privacy['epsilon']:.3f} at δ = {privacy['delta']:.2e}, apart from training's"
        )
    return summary
