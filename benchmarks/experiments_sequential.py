"""Private A/B experiments monitored at every look, with and without CUPED: A/A
false-positive rate with a look every window, A/B power and the average stopping look, under
user-level DP at ε ∈ {1, 4, ∞} (δ = 1 / population) over many repeated experiments.

    python benchmarks/experiments_sequential.py
    python benchmarks/experiments_sequential.py --populations 10000 --repetitions 200 --name quick

Per population (as ``benchmarks/experiments.py``: synthetic people and ML-100K users
resampled), each experiment (A/A: ``{}`` twice; A/B: ``{}`` against ``{"explore": 0.1}``) is
repeated ``--repetitions`` times with a fresh assignment; every person's counts are drawn per
window (``--looks`` windows, plus one pre-period window under the control's lists for the
CUPED covariate), and look ``k`` releases the sums over windows ``1 … k`` with fresh noise:
``K`` releases per experiment, composed by the experiment's accountant (the ε reported is the
whole experiment's; ``σ`` is calibrated to it). The plain analysis releases the default layout
(sensitivity 3), CUPED the covariate layout (sensitivity √21, so more noise).

Per experiment, analysis (plain, CUPED) and metric, the rejection rate of:

- ``fixed``: one test at the final look only (z ≥ 1.96), the reference;
- ``naive``: a test at every look at 1.96 (what monitoring without correction does);
- ``obf``: the Lan-DeMets O'Brien-Fleming-type spending boundary with the canonical
  correlation ``sqrt(I_i / I_j)`` (``stamen.server.experiment_monitoring``);
- ``obf_noise``: the same spending with the noise-aware correlation (the DP noise is fresh
  at each look);
- ``mixture``: the normal-mixture always-valid boundary.

The boundaries are the design's: α is spent over the share of the planned windows
(``k / K``: the information ``1 / Var(Δ̂)`` is not increasing for every metric here, see
``stamen.server.experiment_monitoring``; the information fractions are recorded), and the
correlations come from the mean variances over the A/A repetitions at that setting (what a
design computes in advance), used for A/A and A/B alike. A/A rejection = false-positive
rate (target [0.035, 0.065]; the Monte Carlo standard error at 1,000 repetitions is 0.007);
A/B rejection = power. ``stop`` is the mean
stopping look of ``obf_noise`` (``K`` when it never crosses). CUPED's variance reduction is
``1 − Var(Δ̂_cuped) / Var(Δ̂_plain)`` at the final look, each with its own release's noise.

Writes benchmarks/results/experiments-sequential[-<name>].{json,md}.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from common import (
    Stopwatch,
    command,
    experiment_arguments,
    experiment_plan,
    experiment_population,
    report_head,
    write_results,
)
from experiments import TREATMENT
from threadpoolctl import threadpool_limits

from stamen.client.device.experiments import Experiment
from stamen.models.experiments import METRICS, MetricBounds
from stamen.server.experiment_monitoring import (
    first_crossing,
    group_sequential_bounds,
    look_correlation,
    mixture_bounds,
)
from stamen.server.experiment_stats import outcome_sums
from stamen.simulation.experiments.batched import (
    clear_look_sums,
    experiment_privacy,
    look_statistics,
    release,
)
from stamen.simulation.experiments.response import (
    ResponseModel,
    variant_lists,
    variant_response,
)

RULES = ("fixed", "naive", "obf", "obf_noise", "mixture")


def _design(aa: dict[str, np.ndarray], alpha: float) -> list[dict[str, np.ndarray]]:
    """Per metric, each rule's bounds from the A/A looks' mean information and variances."""
    designs = []
    for m in range(len(METRICS)):
        variance = np.nanmean(aa["variance"][:, :, m], axis=0)
        noise = np.clip(np.nanmean(aa["noise"][:, :, m], axis=0), 0.0, 0.999 * variance)
        info = np.nanmean(1 / aa["variance"][:, :, m], axis=0)
        looks = len(info)
        t = np.arange(1, looks + 1) / looks
        designs.append(
            {
                "fractions": info / info[-1],
                "fixed": np.r_[np.full(looks - 1, np.inf), 1.96],
                "naive": np.full(looks, 1.96),
                "obf": group_sequential_bounds(
                    t, alpha=alpha, correlation=look_correlation(variance, 0 * variance)
                ),
                "obf_noise": group_sequential_bounds(
                    t, alpha=alpha, correlation=look_correlation(variance, noise)
                ),
                "mixture": mixture_bounds(t, alpha=alpha),
            }
        )
    return designs


def _rates(looks: dict[str, np.ndarray], designs: list[dict[str, np.ndarray]]) -> dict:
    out: dict = {rule: {} for rule in RULES}
    out["stop"] = {}
    for m, metric in enumerate(METRICS):
        z = np.nan_to_num(looks["z"][:, :, m])
        for rule in RULES:
            crossing = first_crossing(z, designs[m][rule])
            out[rule][metric] = float((crossing >= 0).mean())
            if rule == "obf_noise":
                stop = np.where(crossing >= 0, crossing + 1, z.shape[1])
                out["stop"][metric] = float(stop.mean())
    return out


def _run_population(args: argparse.Namespace, kind: str, size: int, clock: Stopwatch) -> dict:
    model, bounds = ResponseModel(), MetricBounds()
    repetitions = args.large_repetitions if size >= 100_000 and args.large_repetitions else None
    args = argparse.Namespace(**{**vars(args), "repetitions": repetitions or args.repetitions})
    population = experiment_population(kind, size, args.seed)
    base = "taste" if kind == "synthetic" else "popular"
    control = variant_response(population, variant_lists(population, {}, base=base), model)
    treated = variant_response(
        population, variant_lists(population, TREATMENT, base=base, seed=args.seed), model
    )
    arms = {"aa": [{"name": "A"}, {"name": "A2"}], "ab": [{"name": "A"}, {"name": "B"}]}
    # the two experiments on two cores, one BLAS thread each (the 2-core machine's BLAS
    # threads otherwise contend: a (2, 100000) @ (100000, 21) product took seconds)
    with ProcessPoolExecutor(2, initializer=threadpool_limits, initargs=(1,)) as pool:
        futures = {
            name: pool.submit(
                clear_look_sums,
                population,
                [control, control if name == "aa" else treated],
                Experiment(id=name, salt="0", arms=arms[name]),
                looks=args.looks,
                repetitions=args.repetitions,
                seed=args.seed + (0 if name == "aa" else 1),
                model=model,
                bounds=bounds,
                covariates=True,
            )
            for name in ("aa", "ab")
        }
        clear = {name: future.result() for name, future in futures.items()}
    clock.log(f"{kind} {size}: {args.repetitions} × {args.looks} looks measured")
    rows: dict = {"population": kind, "size": size, "settings": []}
    for epsilon in args.epsilons:
        privacy = experiment_privacy(epsilon, args.mode, size)
        found: dict = {}
        for analysis, covariates in (("plain", False), ("cuped", True)):
            for name in ("aa", "ab"):
                sums = clear[name] if covariates else outcome_sums(clear[name])
                released = release(
                    sums,
                    privacy=privacy,
                    population=size,
                    seed=args.seed + 100,
                    looks=True,
                    covariates=covariates,
                )
                found[analysis, name] = (
                    released,
                    look_statistics(released, bounds=bounds, covariates=covariates),
                )
            designs = _design(found[analysis, "aa"][1], args.alpha)
            for name in ("aa", "ab"):
                released, looks = found[analysis, name]
                final = np.nanmean(looks["variance"][:, -1], axis=0)
                rows["settings"].append(
                    {
                        "experiment": name,
                        "analysis": analysis,
                        "epsilon": epsilon,
                        "achieved_epsilon": released.privacy["epsilon"],
                        "delta": released.privacy.get("delta"),
                        "noise_std": released.noise_std,
                        "looks": args.looks,
                        "repetitions": args.repetitions,
                        "final_stderr": dict(zip(METRICS, np.sqrt(final).tolist(), strict=True)),
                        "fractions": {
                            m: d["fractions"].tolist()
                            for m, d in zip(METRICS, designs, strict=True)
                        },
                        "bounds": {
                            m: {r: d[r].tolist() for r in ("obf", "obf_noise", "mixture")}
                            for m, d in zip(METRICS, designs, strict=True)
                        },
                        **_rates(looks, designs),
                    }
                )
        for name in ("aa", "ab"):
            plain = np.nanmean(found["plain", name][1]["variance"][:, -1], axis=0)
            cuped = np.nanmean(found["cuped", name][1]["variance"][:, -1], axis=0)
            for row in rows["settings"][-4:]:
                if row["experiment"] == name and row["analysis"] == "cuped":
                    row["variance_reduction"] = dict(
                        zip(METRICS, (1 - cuped / plain).tolist(), strict=True)
                    )
        aa = [r for r in rows["settings"][-4:] if r["experiment"] == "aa"]
        clock.log(
            f"{kind} {size} ε={epsilon:g}: A/A fixed / obf_noise "
            + "; ".join(f"{r['analysis']} {r['fixed']} / {r['obf_noise']}" for r in aa)
        )
    return rows


def _markdown(record: dict) -> list[str]:
    lines = report_head(
        "Private A/B experiments, monitored at every look (with and without CUPED)",
        f"Command: `{record['command']}`",
        f"{record['repetitions']} repeated experiments per setting (populations of 100,000 "
        f"or more: {record['large_repetitions'] or record['repetitions']}), {record['looks']} "
        "looks (one "
        f"per window, cumulative), two equal arms, α = {record['alpha']}, {record['mode']} "
        "Gaussian noise, fresh at each look; ε is the whole experiment's (the accountant "
        f"composes the {record['looks']} releases; δ = 1/population). Plain: sensitivity 3; "
        "CUPED (pre-period covariate per metric): sensitivity √21. Rejection rate of: `fixed` "
        "(final look only, 1.96), `naive` (1.96 at every look), `obf` (Lan-DeMets "
        "O'Brien-Fleming spending, canonical correlation), `obf_noise` (the same, noise-aware "
        "correlation), `mixture` (normal-mixture always-valid boundary). A/A: false-positive "
        "rate (target [0.035, 0.065], Monte Carlo standard error 0.007 at 1,000 repetitions); "
        "A/B: power. `stop`: mean stopping look of `obf_noise`. `var. red.`: CUPED's "
        "variance reduction of the final effect against the plain analysis (each with its own "
        "noise).",
        columns="population | size | test | ε | analysis | σ | metric | final stderr | fixed | "
        "naive | obf | obf_noise | mixture | stop | var. red.",
    )
    for pop in record["populations"]:
        for row in pop["settings"]:
            for m in METRICS:
                reduction = row.get("variance_reduction", {}).get(m)
                lines.append(
                    f"| {pop['population']} | {pop['size']} | {row['experiment'].upper()} | "
                    f"{row['epsilon']:g} | {row['analysis']} | {row['noise_std']:.2f} | {m} | "
                    f"{row['final_stderr'][m]:.5f} | "
                    + " | ".join(f"{row[r][m]:.3f}" for r in RULES)
                    + f" | {row['stop'][m]:.2f} | "
                    + ("" if reduction is None else f"{reduction:+.3f}")
                    + " |"
                )
    lines += ["", f"Total time: {record['seconds']:.0f} s."]
    return lines


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    experiment_arguments(parser)
    parser.add_argument("--looks", type=int, default=5)
    parser.add_argument(
        "--large-repetitions", type=int, default=0, help="for populations >= 100,000 (0: same)"
    )
    args = parser.parse_args(argv)
    threadpool_limits(1)
    clock = Stopwatch()
    stem = "experiments-sequential" + (f"-{args.name}" if args.name else "")
    record: dict = {
        "command": command("experiments_sequential.py", argv),
        "repetitions": args.repetitions,
        "large_repetitions": args.large_repetitions,
        "looks": args.looks,
        "alpha": args.alpha,
        "mode": args.mode,
        "response_model": ResponseModel().model_dump(),
        "bounds": MetricBounds().model_dump(),
        "populations": [],
    }
    for kind, size in experiment_plan(args):
        record["populations"].append(_run_population(args, kind, size, clock))
        record["seconds"] = clock.seconds
        write_results(args.out, stem, record, _markdown(record))
    clock.log(f"wrote {args.out / stem}.json and .md")


if __name__ == "__main__":
    main()
