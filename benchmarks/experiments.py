"""Private A/B experiments: A/A false-positive rate, A/B interval coverage and power, under
user-level DP at ε ∈ {1, 4, ∞} (δ = 1 / population), over many repeated experiments.

    python benchmarks/experiments.py
    python benchmarks/experiments.py --populations 10000 --repetitions 200 --name quick

Per population (synthetic people, and ML-100K users resampled to ``--ml100k-size`` people;
``stamen.simulation.experiments.response``), two experiments of two equal arms, each repeated
``--repetitions`` times with a fresh assignment and fresh responses
(``stamen.simulation.experiments.batched``):

- **A/A**: both arms show the same variant (``{}``); the rate of p < α per metric is the
  false-positive rate (its Monte Carlo standard error at 1,000 repetitions is 0.007);
- **A/B**: ``{}`` against ``{"explore": 0.1}`` (ε-greedy exploration: a tenth of the slots
  show a random unseen item); the true effect comes from the simulator in the clear, and the
  rate at which the 95% interval covers it is the coverage; the rate of p < α is the power.

Every repetition's sums are released once through the experiment's Gaussian-sum mechanism
(``--mode``, distributed by default: the training rounds' mechanism), its noise calibrated to
ε by the Opacus RDP accountant with every device reporting (q = 1). The devices needed for a
2% relative engagement lift at 80% power (two-sided α) come from the interval's variance
formula (``stamen.server.experiment_stats``) with the per-person variance and exposure
rate measured on the synthetic population, σ recalibrated to each population's δ.

Writes benchmarks/results/experiments[-<name>].{json,md}.
"""

from __future__ import annotations

import argparse
import math
import sys
from functools import lru_cache

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
from scipy import stats

from stamen.client.device.experiments import Experiment
from stamen.models.experiments import METRICS, MetricBounds, sensitivity
from stamen.privacy.dp.user import UserDP
from stamen.server.experiment_stats import experiment_mechanism
from stamen.simulation.experiments.batched import clear_sums, estimates, experiment_privacy, release
from stamen.simulation.experiments.response import (
    ResponseModel,
    true_means,
    variant_lists,
    variant_response,
)

TREATMENT = {"explore": 0.1}


@lru_cache(maxsize=256)
def _sigma(epsilon: float, population: int) -> float:
    mechanism = experiment_mechanism(
        experiment_privacy(epsilon, "central", population),
        population=population,
        sensitivity=sensitivity(),
        seed=0,
    )
    return 0.0 if mechanism is None else mechanism.sigma


def _devices_needed(
    *, epsilon: float, lift: float, power: float, alpha: float, per_person: dict[str, float]
) -> int:
    """Smallest population (two equal arms) whose A/B test detects ``lift`` with ``power``,
    by the report's variance formula (in scaled units: engagement is bounded by 1)."""
    mu, s2, exposed = per_person["mean"], per_person["variance"], per_person["exposed"]
    delta = lift * mu
    need = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)

    def detects(population: int) -> bool:
        n = population * exposed / 2
        sigma = _sigma(epsilon, population)
        var = 2 * (s2 / n + sigma**2 * (1 + mu**2) / n**2)
        return bool(delta / math.sqrt(var) >= need)

    low, high = 100, 200
    while not detects(high):
        low, high = high, high * 2
    while high - low > max(1, high // 200):
        middle = (low + high) // 2
        low, high = (low, middle) if detects(middle) else (middle, high)
    return high


def _run_population(args: argparse.Namespace, kind: str, size: int, clock: Stopwatch) -> dict:
    model, bounds = ResponseModel(), MetricBounds()
    population = experiment_population(kind, size, args.seed)
    base = "taste" if kind == "synthetic" else "popular"
    control = variant_response(population, variant_lists(population, {}, base=base), model)
    treated = variant_response(
        population, variant_lists(population, TREATMENT, base=base, seed=args.seed), model
    )
    truth = true_means(population, [control, treated], model, bounds)
    clock.log(f"{kind} {size}: population and lists ready")
    experiments = {
        "aa": (Experiment(id="aa", salt="0", arms=[{"name": "A"}, {"name": "A2"}]), [control] * 2),
        "ab": (
            Experiment(
                id="ab", salt="0", arms=[{"name": "A"}, {"name": "B", "overrides": TREATMENT}]
            ),
            [control, treated],
        ),
    }
    rows: dict = {
        "population": kind,
        "size": size,
        "truth": {m: truth[:, j].tolist() for j, m in enumerate(METRICS)},
        "settings": [],
    }
    for name, (experiment, responses) in experiments.items():
        clear = clear_sums(
            population,
            responses,
            experiment,
            repetitions=args.repetitions,
            seed=args.seed + (0 if name == "aa" else 1),
            model=model,
            bounds=bounds,
        )
        clock.log(f"{kind} {size} {name}: {args.repetitions} experiments measured")
        if name == "ab" and kind == "synthetic":
            clear_est = estimates(
                release(clear, privacy=UserDP(), population=size, seed=0), bounds=bounds
            )
            engagement = METRICS.index("engagement")
            scaled_var = clear_est["variance"][:, 0, engagement] * clear_est["n"][:, 0]
            rows["per_person"] = {
                "mean": float(truth[0, engagement]),
                "variance": float(np.mean(scaled_var)),
                "exposed": float(np.mean(clear_est["n"][:, 0]) * 2 / size),
            }
        true_effect = truth[1] - truth[0] if name == "ab" else np.zeros(len(METRICS))
        for epsilon in args.epsilons:
            released = release(
                clear,
                privacy=experiment_privacy(epsilon, args.mode, size),
                population=size,
                seed=args.seed + 100,
            )
            est = estimates(released, bounds=bounds, alpha=args.alpha)
            lower, upper = est["lower"][:, 1], est["upper"][:, 1]
            rejected = (est["p_value"][:, 1] < args.alpha).mean(axis=0)
            covered = ((lower <= true_effect) & (true_effect <= upper)).mean(axis=0)
            row = {
                "experiment": name,
                "epsilon": epsilon,
                "achieved_epsilon": released.privacy["epsilon"],
                "delta": released.privacy.get("delta"),
                "noise_multiplier": released.privacy.get("noise_multiplier"),
                "noise_std": released.noise_std,
                "mode": released.privacy["mode"],
                "repetitions": args.repetitions,
                "exposed_per_arm": float(est["n"][:, 0].mean()),
                "true_effect": dict(zip(METRICS, true_effect.tolist(), strict=True)),
                "rejection_rate": dict(zip(METRICS, rejected.tolist(), strict=True)),
                "coverage": dict(zip(METRICS, covered.tolist(), strict=True)),
                "mean_effect": dict(
                    zip(METRICS, est["effect"][:, 1].mean(0).tolist(), strict=True)
                ),
                "mean_stderr": dict(
                    zip(METRICS, est["stderr"][:, 1].mean(0).tolist(), strict=True)
                ),
                "effect_sd": dict(zip(METRICS, est["effect"][:, 1].std(0).tolist(), strict=True)),
            }
            rows["settings"].append(row)
            clock.log(
                f"{kind} {size} {name} ε={epsilon:g}: reject {rejected.round(3).tolist()} "
                f"cover {covered.round(3).tolist()}"
            )
    return rows


def _markdown(record: dict) -> list[str]:
    lines = report_head(
        "Private A/B experiments",
        f"Command: `{record['command']}`",
        f"{record['repetitions']} repeated experiments per setting, two equal arms, α = "
        f"{record['alpha']}, {record['mode']} Gaussian noise (Opacus RDP, q = 1, "
        "δ = 1/population), "
        "sensitivity √9 = 3 per person. A/A: both arms the same variant; A/B: `{}` against "
        '`{"explore": 0.1}`. Rejection rate = share of experiments with p < α (A/A: the '
        "false-positive rate; A/B: the power); coverage = share of 95% intervals holding the "
        "simulator's true effect. Monte Carlo standard error of a rate near 0.05 or 0.95 at "
        "1,000 repetitions: 0.007. Targets: A/A false positives in [0.035, 0.065], coverage "
        "93–97%.",
        columns="population | size | test | ε | σ | exposed/arm | metric | true effect | "
        "mean effect ± stderr | rejection rate | coverage",
    )
    for pop in record["populations"]:
        for row in pop["settings"]:
            for metric in METRICS:
                lines.append(
                    f"| {pop['population']} | {pop['size']} | {row['experiment'].upper()} | "
                    f"{row['epsilon']:g} | {row['noise_std']:.2f} | {row['exposed_per_arm']:.0f} | "
                    f"{metric} | {row['true_effect'][metric]:.5f} | "
                    f"{row['mean_effect'][metric]:.5f} ± {row['mean_stderr'][metric]:.5f} | "
                    f"{row['rejection_rate'][metric]:.3f} | {row['coverage'][metric]:.3f} |"
                )
    needed = record.get("devices_needed")
    if needed:
        lines += [
            "",
            "Devices needed to detect a 2% relative lift in engagement per impression at 80% "
            "power (α = 0.05, two equal arms), from the interval's variance formula with the "
            f"synthetic population's per-person figures ({needed['per_person']}):",
            "",
            "| ε | devices |",
            "|---|---|",
        ]
        lines += [f"| {eps} | {n:,} |" for eps, n in needed["by_epsilon"].items()]
    lines += ["", f"Total time: {record['seconds']:.0f} s."]
    return lines


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    experiment_arguments(parser)
    args = parser.parse_args(argv)
    clock = Stopwatch()
    stem = "experiments" + (f"-{args.name}" if args.name else "")
    record: dict = {
        "command": command("experiments.py", argv),
        "repetitions": args.repetitions,
        "alpha": args.alpha,
        "mode": args.mode,
        "response_model": ResponseModel().model_dump(),
        "bounds": MetricBounds().model_dump(),
        "populations": [],
    }
    for kind, size in experiment_plan(args):
        record["populations"].append(_run_population(args, kind, size, clock))
        per_person = next(
            (p["per_person"] for p in record["populations"] if "per_person" in p), None
        )
        if per_person is not None:
            record["devices_needed"] = {
                "per_person": per_person,
                "by_epsilon": {
                    f"{eps:g}": _devices_needed(
                        epsilon=eps, lift=0.02, power=0.8, alpha=args.alpha, per_person=per_person
                    )
                    for eps in args.epsilons
                },
            }
        record["seconds"] = clock.seconds
        write_results(args.out, stem, record, _markdown(record))
    clock.log(f"wrote {args.out / stem}.json and .md")


if __name__ == "__main__":
    main()
