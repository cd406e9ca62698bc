"""Private A/B experiments: power against the population at ε ∈ {1, 4, ∞} (δ = 1 / population),
from the interval's variance formula, checked by Monte Carlo through the batched path.

    python benchmarks/experiments_power.py
    python benchmarks/experiments_power.py --repetitions 200 --lift-mc 30000 --explore-mc 10000 \
        --ml100k-size 0 --name quick

Two designs, two equal arms each, metric engagement per impression, two-sided test at α:

- **lift**: an exact 2% relative lift (``--lift``). The simulator has no pipeline setting with
  that effect, so the treatment arm is the control's own lists with every shown slot's
  engagement probability multiplied by 1.02 (:func:`lifted_response`: each slot becomes a
  slot of its own probability; the per-slot draws are distributed as the control's, only
  the probabilities change). Its true engagement (``true_means``) is exactly 1.02 × the
  control's; the arm draws no ``not_interested`` events (not measured here);
- **explore**: the simulator's real pipeline difference, ``{}`` against ``{"explore": 0.1}``
  (``benchmarks/experiments.py``'s A/B), its true effect from ``true_means``.

**Formula** (``stamen.server.experiment_stats``' variance, in engagement's own units, bound 1):
with ``n = population · exposed / 2`` exposed people per arm,

    Var(Δ̂) = Σ_arms [ s²_a / n + σ² (1 + μ_a²) / n² ],
    power  = Φ(|Δ| / √Var − z_{1−α/2}) + Φ(−|Δ| / √Var − z_{1−α/2}),

with each arm's per-person variance ``s²_a`` and the exposure rate measured on a reference
population (``--reference-size`` synthetic people, and ML-100K users resampled to
``--ml100k-size``; ``--reference-repetitions`` noise-free runs of ``clear_sums``), each arm's
true mean ``μ_a`` and the true effect ``Δ`` from the simulator, and ``σ`` the experiment
mechanism's noise (``experiment_mechanism``, ``--mode``, distributed by default as in
``benchmarks/experiments.py``; Opacus RDP, q = 1) calibrated at every population to its
δ = 1 / population. The devices needed for ``--power`` solve ``power(N) = --power`` for N
(``scipy.optimize.brentq`` on log N).

**Monte Carlo**: at each of ``--lift-mc`` / ``--explore-mc`` populations (``--ml100k-mc`` for
ML-100K), a population of that size, ``--repetitions`` experiments through
``stamen.simulation.experiments.batched`` (fresh assignment and responses each; the sums
released once per ε through the same mechanism; the server's p-value), the power is the share
with p < α, shown with its 95% Clopper–Pearson interval beside the formula (reference figures:
the curve; and the figures of that population itself, whose true effect and variances differ
slightly from the reference's).

Writes benchmarks/results/experiments-power[-<name>].{json,md,png} after every stage.
"""

from __future__ import annotations

import argparse
import math
import sys
from functools import lru_cache
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from common import (  # noqa: E402
    Stopwatch,
    command,
    experiment_population,
    report_head,
    write_results,
)
from scipy import optimize, stats  # noqa: E402

from stamen.client.device.experiments import Experiment  # noqa: E402
from stamen.models.experiments import METRICS, MetricBounds, sensitivity  # noqa: E402
from stamen.server.experiment_stats import experiment_mechanism  # noqa: E402
from stamen.simulation.experiments.batched import (  # noqa: E402
    clear_sums,
    estimates,
    experiment_privacy,
    release,
)
from stamen.simulation.experiments.response import (  # noqa: E402
    Population,
    ResponseModel,
    VariantResponse,
    true_means,
    variant_lists,
    variant_response,
)

HERE = Path(__file__).resolve().parent
TREATMENT = {"explore": 0.1}
ENGAGEMENT = METRICS.index("engagement")
DESIGNS = ("lift", "explore")
EXPERIMENTS = {
    "lift": Experiment(id="lift", salt="0", arms=[{"name": "A"}, {"name": "B"}]),
    "explore": Experiment(
        id="explore", salt="0", arms=[{"name": "A"}, {"name": "B", "overrides": TREATMENT}]
    ),
}
COLOURS = {1.0: "tab:red", 4.0: "tab:orange", math.inf: "tab:blue"}


def lifted_response(response: VariantResponse, factor: float) -> VariantResponse:
    """``response``'s lists with every shown slot's engagement probability times ``factor``:
    each shown slot becomes a slot of its own probability (``hit_person``/``hit_p``) and none
    is a miss, so the per-slot draws are as before but for the probabilities, the true
    engagement is exactly ``factor`` times ``response``'s, and no ``not_interested`` event is
    drawn."""
    person, slot = np.nonzero(response.slot_p > 0)
    p = response.slot_p[person, slot] * factor
    if p.size and p.max() > 1:
        raise ValueError(f"a slot's probability times {factor} exceeds 1")
    return VariantResponse(
        k=response.k,
        slot_p=response.slot_p * factor,
        misses=np.zeros_like(response.misses),
        hit_person=person,
        hit_p=p,
    )


def formula_power(
    population: float,
    *,
    sigma: float,
    effect: float,
    means: tuple[float, float],
    variances: tuple[float, float],
    exposed: float,
    alpha: float = 0.05,
) -> float:
    """Power of the two-sided level-``alpha`` test of a two-equal-arm experiment over
    ``population`` devices (``exposed`` of them exposed), by the interval's variance formula
    (module docstring): true ``effect``, each arm's true mean and per-person variance (in
    units bounded by 1) and the noise's standard deviation ``sigma`` per coordinate."""
    n = population * exposed / 2
    var = sum(
        s2 / n + sigma**2 * (1 + mu**2) / n**2 for mu, s2 in zip(means, variances, strict=True)
    )
    shift = abs(effect) / math.sqrt(var)
    z = stats.norm.ppf(1 - alpha / 2)
    return float(stats.norm.cdf(shift - z) + stats.norm.cdf(-shift - z))


@lru_cache(maxsize=4096)
def mechanism_sigma(epsilon: float, population: int, mode: str) -> float:
    """The experiment mechanism's noise standard deviation at ``epsilon``, δ = 1/population."""
    mechanism = experiment_mechanism(
        experiment_privacy(epsilon, mode, population),
        population=population,
        sensitivity=sensitivity(),
        seed=0,
    )
    return 0.0 if mechanism is None else mechanism.sigma


def power_at(population: int, epsilon: float, figures: dict, args: argparse.Namespace) -> float:
    """:func:`formula_power` with σ calibrated at ``population`` and ``figures``' values."""
    return formula_power(
        population,
        sigma=mechanism_sigma(epsilon, population, args.mode),
        effect=figures["effect"],
        means=tuple(figures["means"]),  # type: ignore[arg-type]
        variances=tuple(figures["variances"]),  # type: ignore[arg-type]
        exposed=figures["exposed"],
        alpha=args.alpha,
    )


def devices_needed(
    epsilon: float, figures: dict, args: argparse.Namespace, *, low: int = 100, high: int = 10**10
) -> int | None:
    """The smallest population whose formula power reaches ``args.power`` (``None`` beyond
    ``high``): ``brentq`` on log N, σ recalibrated at every (rounded) N."""

    def gap(log_n: float) -> float:
        return power_at(round(math.exp(log_n)), epsilon, figures, args) - args.power

    if gap(math.log(high)) < 0:
        return None
    if gap(math.log(low)) >= 0:
        return low
    root = optimize.brentq(gap, math.log(low), math.log(high), xtol=1e-7)
    found = max(low, math.floor(math.exp(root)) - 2)
    while power_at(found, epsilon, figures, args) < args.power:
        found += 1
    return found


def _arms(
    kind: str, size: int, design: str, seed: int, lift: float
) -> tuple[Population, list[VariantResponse], np.ndarray]:
    """A population, its two arms' responses under ``design`` and their true means."""
    model = ResponseModel()
    population = experiment_population(kind, size, seed)
    base = "taste" if kind == "synthetic" else "popular"
    control = variant_response(population, variant_lists(population, {}, base=base), model)
    if design == "lift":
        treated = lifted_response(control, 1.0 + lift)
    else:
        treated = variant_response(
            population, variant_lists(population, TREATMENT, base=base, seed=seed), model
        )
    responses = [control, treated]
    return population, responses, true_means(population, responses, model, MetricBounds())


def _figures(clear: np.ndarray, truth: np.ndarray, size: int) -> dict:
    """Per-person figures of engagement from noise-free sums ``(repetitions, 2, stats)``:
    each arm's per-person variance Q/n (averaged over repetitions), the exposure rate and the
    true means and effect."""
    n = clear[:, :, 0]
    s1, s2 = clear[:, :, 1 + 2 * ENGAGEMENT], clear[:, :, 2 + 2 * ENGAGEMENT]
    per_person = (s2 - s1**2 / n) / n
    means = truth[:, ENGAGEMENT]
    return {
        "means": means.tolist(),
        "variances": per_person.mean(axis=0).tolist(),
        "exposed": float(n.sum(axis=1).mean() / size),
        "effect": float(means[1] - means[0]),
        "relative_effect": float(means[1] / means[0] - 1),
    }


def _clear(
    population: Population,
    responses: list[VariantResponse],
    design: str,
    repetitions: int,
    seed: int,
) -> np.ndarray:
    return clear_sums(
        population,
        responses,
        EXPERIMENTS[design],
        repetitions=repetitions,
        seed=seed,
        model=ResponseModel(),
        bounds=MetricBounds(),
    )


def _monte_carlo(
    kind: str, size: int, design: str, reference: dict, args: argparse.Namespace, clock: Stopwatch
) -> list[dict]:
    population, responses, truth = _arms(kind, size, design, args.seed, args.lift)
    clear = _clear(population, responses, design, args.repetitions, args.seed + 1)
    own = _figures(clear, truth, size)
    rows = []
    for epsilon in args.epsilons:
        released = release(
            clear,
            privacy=experiment_privacy(epsilon, args.mode, size),
            population=size,
            seed=args.seed + 100,
        )
        est = estimates(released, bounds=MetricBounds(), alpha=args.alpha)
        p_value = est["p_value"][:, 1, ENGAGEMENT]
        rejected = int((p_value < args.alpha).sum())
        lower, upper = est["lower"][:, 1, ENGAGEMENT], est["upper"][:, 1, ENGAGEMENT]
        covered = float(((lower <= own["effect"]) & (own["effect"] <= upper)).mean())
        interval = stats.binomtest(rejected, args.repetitions).proportion_ci(0.95, "exact")
        formula = power_at(size, epsilon, reference, args)
        formula_own = power_at(size, epsilon, own, args)
        binomial_se = math.sqrt(max(formula_own * (1 - formula_own), 1e-12) / args.repetitions)
        power = rejected / args.repetitions
        rows.append(
            {
                "kind": kind,
                "design": design,
                "population": size,
                "epsilon": epsilon,
                "achieved_epsilon": released.privacy["epsilon"],
                "noise_std": released.noise_std,
                "mode": released.privacy["mode"],
                "repetitions": args.repetitions,
                "power": power,
                "power_low": interval.low,
                "power_high": interval.high,
                "coverage": covered,
                "effect_sd": float(est["effect"][:, 1, ENGAGEMENT].std()),
                "mean_stderr": float(est["stderr"][:, 1, ENGAGEMENT].mean()),
                "formula_power": formula,
                "formula_power_own": formula_own,
                "z_own": (power - formula_own) / binomial_se,
                "figures": own,
            }
        )
        clock.log(
            f"MC {kind} {design} {size} ε={epsilon:g}: power {power:.3f} "
            f"[{interval.low:.3f}, {interval.high:.3f}], formula {formula:.3f} "
            f"(own figures {formula_own:.3f})"
        )
    return rows


def _plot(record: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    grid = record["grid"]
    for ax, design in zip(axes, DESIGNS, strict=True):
        for kind, style in (("synthetic", "-"), ("ml-100k", "--")):
            ref = record["reference"].get(kind)
            if ref is None:
                continue
            for eps_key, curve in ref[design]["power"].items():
                eps = float(eps_key)
                ax.plot(
                    grid,
                    curve,
                    style,
                    color=COLOURS.get(eps, "k"),
                    lw=1.6 if kind == "synthetic" else 1.0,
                    label=f"{kind} formula, ε = {_eps(eps)}",
                )
        for row in record["monte_carlo"]:
            if row["design"] != design:
                continue
            colour = COLOURS.get(row["epsilon"], "k")
            synthetic = row["kind"] == "synthetic"
            ax.errorbar(
                row["population"] * (1.0 if synthetic else 1.06),
                row["power"],
                yerr=[[row["power"] - row["power_low"]], [row["power_high"] - row["power"]]],
                fmt="o" if synthetic else "s",
                mfc=colour if synthetic else "white",
                color=colour,
                ms=5,
                capsize=3,
            )
        needed = record["reference"]["synthetic"][design]["devices_needed"]
        ax.text(
            0.98,
            0.04,
            f"synthetic, devices for {record['power']:.0%} power:\n"
            + "\n".join(
                f"ε = {_eps(float(k))}: " + ("> 10¹⁰" if v is None else f"{v['devices']:,}")
                for k, v in needed.items()
            ),
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=7,
            bbox={"facecolor": "white", "edgecolor": "grey", "alpha": 0.8},
        )
        ax.axhline(record["power"], color="grey", ls=":", lw=1)
        ax.axhline(record["alpha"], color="grey", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("devices (population; δ = 1/population)")
        ref = record["reference"]["synthetic"][design]["figures"]
        title = (
            f"exact {record['lift']:.0%} relative lift"
            if design == "lift"
            else f'{{}} vs {{"explore": 0.1}} (synthetic: {ref["relative_effect"]:+.1%})'
        )
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3, which="both", lw=0.5)
    axes[0].set_ylabel(f"power (two-sided α = {record['alpha']}, engagement)")
    handles, labels = axes[0].get_legend_handles_labels()
    handles.append(plt.Line2D([], [], marker="o", color="k", ls="none"))
    labels.append("Monte Carlo (95% CI), synthetic")
    if any(row["kind"] == "ml-100k" for row in record["monte_carlo"]):
        handles.append(plt.Line2D([], [], marker="s", mfc="white", color="k", ls="none"))
        labels.append("Monte Carlo, ML-100K")
    axes[0].legend(handles, labels, fontsize=7, loc="upper left")
    fig.suptitle(
        f"Private A/B power vs population ({record['mode']} Gaussian noise, "
        f"{record['repetitions']} experiments per point)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _eps(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:g}"


def _markdown(record: dict) -> list[str]:
    lines = report_head(
        "Private A/B experiments: power against the population",
        f"Command: `{record['command']}`",
        "Two equal arms, engagement per impression, two-sided α = "
        f"{record['alpha']}, {record['mode']} Gaussian noise (Opacus RDP, q = 1, δ = "
        "1/population, σ recalibrated at every population), sensitivity √9 = 3 per person. "
        f"**lift**: an exact {record['lift']:.0%} relative lift (the control's lists with every "
        f"slot's engagement probability × {1 + record['lift']:g}); **explore**: `{{}}` against "
        '`{"explore": 0.1}`. Formula power: the interval\'s variance formula with the '
        "per-person figures of the reference population (first table); Monte Carlo: "
        f"{record['repetitions']} experiments through the batched path per point, with the "
        "95% Clopper–Pearson interval. Plot: "
        f"`{record['stem']}.png`.",
        columns="population | design | control mean | treatment mean | true effect (relative) "
        "| per-person variance A / B | exposed",
    )
    for kind, ref in record["reference"].items():
        for design in DESIGNS:
            f = ref[design]["figures"]
            lines.append(
                f"| {kind} ({ref['size']:,}) | {design} | {f['means'][0]:.5f} | "
                f"{f['means'][1]:.5f} | {f['effect']:+.5f} ({f['relative_effect']:+.2%}) | "
                f"{f['variances'][0]:.6f} / {f['variances'][1]:.6f} | {f['exposed']:.4f} |"
            )
    epsilons = record["epsilons"]
    lines += [
        "",
        f"Devices needed for {record['power']:.0%} power (formula; σ at that population in "
        "brackets):",
        "",
        "| population | design | " + " | ".join(f"ε = {_eps(e)}" for e in epsilons) + " |",
        "|---|---|" + "---|" * len(epsilons),
    ]
    for kind, ref in record["reference"].items():
        for design in DESIGNS:
            cells = []
            for e in epsilons:
                need = ref[design]["devices_needed"][f"{e:g}"]
                cells.append(
                    "> 10¹⁰" if need is None else f"{need['devices']:,} (σ = {need['sigma']:.2f})"
                )
            lines.append(f"| {kind} | {design} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Formula power on the grid (synthetic reference):",
        "",
        "| design | ε | " + " | ".join(f"{n:,}" for n in record["table_populations"]) + " |",
        "|---|---|" + "---|" * len(record["table_populations"]),
    ]
    for design in DESIGNS:
        for e in epsilons:
            curve = record["reference"]["synthetic"][design]["table"][f"{e:g}"]
            lines.append(
                f"| {design} | {_eps(e)} | " + " | ".join(f"{p:.3f}" for p in curve) + " |"
            )
    lines += [
        "",
        "Monte Carlo against the formula (z: (MC − formula with that population's own "
        "figures) / binomial standard error):",
        "",
        "| population | design | devices | ε | σ | MC power [95% CI] | formula (reference) | "
        "formula (own figures) | z | coverage | effect sd / mean stderr |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in record["monte_carlo"]:
        lines.append(
            f"| {row['kind']} | {row['design']} | {row['population']:,} | "
            f"{_eps(row['epsilon'])} | {row['noise_std']:.2f} | {row['power']:.3f} "
            f"[{row['power_low']:.3f}, {row['power_high']:.3f}] | {row['formula_power']:.3f} | "
            f"{row['formula_power_own']:.3f} | {row['z_own']:+.2f} | {row['coverage']:.3f} | "
            f"{row['effect_sd'] / row['mean_stderr']:.3f} |"
        )
    if record["monte_carlo"]:
        inside = sum(
            r["power_low"] <= r["formula_power_own"] <= r["power_high"]
            for r in record["monte_carlo"]
        )
        worst = max(abs(r["z_own"]) for r in record["monte_carlo"])
        lines += [
            "",
            f"The formula (own figures) lies inside the Monte Carlo 95% interval at {inside} of "
            f"{len(record['monte_carlo'])} points; largest |z| = {worst:.2f}.",
        ]
    lines += ["", f"Total time: {record['seconds']:.0f} s."]
    return lines


def _write(args: argparse.Namespace, record: dict, clock: Stopwatch) -> None:
    record["seconds"] = clock.seconds
    write_results(args.out, record["stem"], record, _markdown(record))
    if "synthetic" in record["reference"]:
        _plot(record, args.out / f"{record['stem']}.png")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 4.0, math.inf])
    parser.add_argument("--lift", type=float, default=0.02)
    parser.add_argument("--power", type=float, default=0.8)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--mode", choices=["central", "distributed"], default="distributed")
    parser.add_argument("--grid", type=float, nargs=3, default=[1e3, 1e7, 49], help="lo hi points")
    parser.add_argument("--reference-size", type=int, default=100_000)
    parser.add_argument("--reference-repetitions", type=int, default=20)
    parser.add_argument("--ml100k-size", type=int, default=100_000, help="0: skip ML-100K")
    parser.add_argument("--repetitions", type=int, default=1000)
    parser.add_argument(
        "--lift-mc", type=int, nargs="*", default=[10_000, 30_000, 100_000, 200_000, 300_000]
    )
    parser.add_argument("--explore-mc", type=int, nargs="*", default=[10_000, 30_000, 60_000])
    parser.add_argument("--ml100k-mc", type=int, nargs="*", default=[100_000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    clock = Stopwatch()
    low, high, points = args.grid
    grid = np.unique(np.round(np.geomspace(low, high, int(points)))).astype(int).tolist()
    table_populations = [
        10**e for e in range(math.ceil(math.log10(low)), math.floor(math.log10(high)) + 1)
    ]
    record: dict = {
        "command": command("experiments_power.py", argv),
        "stem": "experiments-power" + (f"-{args.name}" if args.name else ""),
        "epsilons": args.epsilons,
        "lift": args.lift,
        "power": args.power,
        "alpha": args.alpha,
        "mode": args.mode,
        "repetitions": args.repetitions,
        "response_model": ResponseModel().model_dump(),
        "bounds": MetricBounds().model_dump(),
        "grid": grid,
        "table_populations": table_populations,
        "reference": {},
        "monte_carlo": [],
    }
    kinds = [("synthetic", args.reference_size)]
    if args.ml100k_size:
        kinds.append(("ml-100k", args.ml100k_size))
    for kind, size in kinds:
        ref: dict = {"size": size}
        for design in DESIGNS:
            population, responses, truth = _arms(kind, size, design, args.seed, args.lift)
            clear = _clear(population, responses, design, args.reference_repetitions, args.seed + 7)
            figures = _figures(clear, truth, size)
            needed = {}
            for e in args.epsilons:
                n = devices_needed(e, figures, args)
                needed[f"{e:g}"] = (
                    None if n is None else {"devices": n, "sigma": mechanism_sigma(e, n, args.mode)}
                )
            ref[design] = {
                "figures": figures,
                "power": {
                    f"{e:g}": [power_at(n, e, figures, args) for n in grid] for e in args.epsilons
                },
                "table": {
                    f"{e:g}": [power_at(n, e, figures, args) for n in table_populations]
                    for e in args.epsilons
                },
                "devices_needed": needed,
            }
            clock.log(
                f"{kind} {design}: relative effect {figures['relative_effect']:+.4f}, "
                f"devices for {args.power:.0%} power "
                + ", ".join(f"ε={k}: {v['devices'] if v else None}" for k, v in needed.items())
            )
        record["reference"][kind] = ref
        _write(args, record, clock)
    plan = [("synthetic", "lift", n) for n in args.lift_mc]
    plan += [("synthetic", "explore", n) for n in args.explore_mc]
    if args.ml100k_size:
        plan += [("ml-100k", d, n) for n in args.ml100k_mc for d in DESIGNS]
    for kind, design, size in plan:
        record["monte_carlo"] += _monte_carlo(
            kind, size, design, record["reference"][kind][design]["figures"], args, clock
        )
        _write(args, record, clock)
    clock.log(f"wrote {args.out / record['stem']}.json, .md and .png")


if __name__ == "__main__":
    main()
