"""``stamen experiment``: define an A/B experiment into a release, plan it on simulated
people, and read what a federation's measurement rounds found.

    stamen experiment check FILE                  validate a definition, print its arms
    stamen experiment publish FILE --releases DIR --signing-key KEY
                                                  the newest release again, with the
                                                  experiment, as the next release
    stamen experiment end ID --releases DIR --signing-key KEY
                                                  the next release without it
    stamen experiment candidates FILE --releases DIR --signing-key KEY
                                                  the next release, carrying these
                                                  candidate policies (--none: without any)
    stamen experiment simulate FILE               repeated experiments on simulated people
    stamen experiment report CHECKPOINTS          each experiment's latest measurement
    stamen experiment report CHECKPOINTS --off-policy
                                                  the candidates' latest off-policy estimates

A definition is a JSON or TOML file of ``id``, ``salt``, ``arms`` (each ``name``,
``weight``, ``overrides`` of the pipeline's settings) and, optionally, ``guardrails`` (of
``diversity``, ``latency``): ``stamen.client.device.experiments``.
A candidates file holds ``candidates``, a list of ``name``, ``overrides`` and ``max_weight``
(``stamen.client.device.experiments.CandidatePolicy``). A deployment run measures the
experiments of the release it starts from every ``experiment-every`` rounds
(``stamen.server.experiment_rounds``), and evaluates its candidate policies off-policy at
the same rounds (``stamen.server.off_policy_rounds``); the reports go into the run's
``rounds.jsonl``, which ``report`` reads.
"""

import json
import math
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from stamen.client.device.experiments import CandidatePolicy, Experiment

__all__ = [
    "candidates",
    "check",
    "end",
    "experiment_app",
    "publish",
    "read_candidates",
    "read_experiment",
    "report",
    "simulate",
]

experiment_app = typer.Typer(
    name="experiment",
    help="Private A/B experiments: define, publish, plan, report.",
    no_args_is_help=True,
)


def _read_definition(path: Path) -> Any:
    """The JSON (or, by its ``.toml`` suffix, TOML) content of ``path``.

    Raises:
        DataError: the file cannot be read or parsed.
    """
    from stamen.errors import DataError

    try:
        text = path.read_text()
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None
    try:
        return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise DataError(
            f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'} ({error})"
        ) from None


def read_experiment(path: Path) -> "Experiment":
    """The experiment defined in ``path`` (JSON, or TOML by its ``.toml`` suffix).

    Raises:
        DataError: the file cannot be read or parsed.
        ConfigError: not a valid experiment (every field at fault named).
    """
    from stamen.client.device.experiments import Experiment
    from stamen.errors import ConfigError

    data = _read_definition(path)
    try:
        return Experiment.from_json(data)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def read_candidates(path: Path) -> "tuple[CandidatePolicy, ...]":
    """The candidate policies defined in ``path`` (JSON or TOML): an object whose
    ``candidates`` lists them (TOML: ``[[candidates]]`` tables), each ``name``, ``overrides``
    and ``max_weight``.

    Raises:
        DataError: the file cannot be read or parsed.
        ConfigError: no candidates, or one is not valid (every field at fault named).
    """
    from stamen.client.device.experiments import candidate_list
    from stamen.errors import ConfigError

    data = _read_definition(path)
    if not isinstance(data, dict) or set(data) != {"candidates"}:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"{path}: expected an object with one key, 'candidates' (got {found})")
    if not data["candidates"]:
        raise ConfigError(
            f"{path}: no candidate policies (to publish a release without any: "
            "stamen experiment candidates --none)"
        )
    try:
        return candidate_list(data["candidates"])
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def _arms_table(experiment: "Experiment") -> Table:
    table = Table(title=f"experiment {experiment.id}")
    for column in ("arm", "share", "overrides"):
        table.add_column(column)
    shares = [0.0, *experiment.cumulative_shares()]
    for k, arm in enumerate(experiment.arms):
        share = shares[k + 1] - shares[k]
        table.add_row(arm.name, f"{share:.1%}", json.dumps(arm.overrides) if arm.overrides else "")
    return table


@experiment_app.command()
def check(
    file: Annotated[Path, typer.Argument(help="the experiment's definition (JSON or TOML)")],
) -> None:
    """Validate an experiment's definition and print its arms and guardrails (exit 2 on a
    problem)."""
    experiment = read_experiment(file)
    console = Console()
    console.print(_arms_table(experiment))
    from stamen.models.experiments import METRICS

    guardrails = experiment.metrics[len(METRICS) :]
    if guardrails:
        console.print(f"guardrails: {', '.join(guardrails)}", soft_wrap=True)


def _overlaps(experiments: list[dict[str, Any]]) -> list[str]:
    """The pipeline fields that two of ``experiments`` (JSON form) both override: a device
    in both would serve only the later one's value, and neither effect would be what its
    arms define."""
    owners: dict[str, str] = {}
    found = []
    for e in experiments:
        fields = {f for arm in e.get("arms", []) for f in arm.get("overrides", {})}
        for field in sorted(fields):
            if field in owners:
                found.append(f"{field!r} ({owners[field]} and {e['id']})")
            owners[field] = e["id"]
    return found


def _republish(
    releases: Path,
    signing_key: Path,
    change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
    *,
    key: str | None = None,
) -> None:
    """Publish the newest release of ``releases`` again, as the next release, with its
    experiments (``key``: its candidate policies; JSON form) as ``change`` makes them from
    the newest's."""
    from stamen.errors import ConfigError
    from stamen.models.bundle import ReleaseBundle, latest_release
    from stamen.models.experiments import EXPERIMENTS_EXTRA
    from stamen.models.registry import build_model
    from stamen.privacy import open_signed
    from stamen.server.releases import (
        PUBLIC_KEY_FILE,
        ReleaseWriter,
        load_or_create_signing_key,
    )

    key = key or EXPERIMENTS_EXTRA

    if not signing_key.is_file():
        raise ConfigError(f"{signing_key}: no release signing key")
    path = latest_release(releases)
    if path is None:
        raise ConfigError(f"{releases}: no release to publish from (stamen release init)")
    private, public = load_or_create_signing_key(signing_key)
    pinned = releases / PUBLIC_KEY_FILE
    if pinned.is_file() and pinned.read_bytes() != public:
        raise ConfigError(
            f"--signing-key {signing_key}: not the key of {pinned} (the devices' pinned key); "
            "pass the publisher's private key file"
        )
    newest = ReleaseBundle.decode(
        open_signed(path.read_bytes(), public_key=public, source=str(path)), source=str(path)
    )
    what = "experiments" if key == EXPERIMENTS_EXTRA else "candidate policies"
    before = list(newest.extras.get(key, []))
    after = change(before)
    if after == before:
        raise ConfigError(
            f"release {newest.release} already carries these {what} as they are; nothing published"
        )
    clashes = _overlaps(after) if key == EXPERIMENTS_EXTRA else []
    if clashes:
        raise ConfigError(
            "experiments in one release may not override the same pipeline field: "
            + ", ".join(clashes)
            + " (end one first: stamen experiment end)"
        )
    extras = {**newest.extras, key: after}
    if not after:
        del extras[key]
    model = build_model(newest.model, dict(newest.settings), newest.catalog)
    writer = ReleaseWriter(
        releases,
        private_key=private,
        public_key=public,
        model=model,
        quantize=bool(newest.quantized),
        identity=newest.identity,
        extras=extras,
    )
    written = writer.publish(
        newest.release + 1,
        newest.shared_arrays(),
        trending=newest.trending,
        ranker=newest.ranker,
    )
    names = ", ".join(e["id" if key == EXPERIMENTS_EXTRA else "name"] for e in after) or "none"
    Console().print(f"release {newest.release + 1} in {written}, carrying {what}: {names}")


@experiment_app.command()
def publish(
    files: Annotated[list[Path], typer.Argument(help="experiment definitions (JSON or TOML)")],
    releases: Annotated[Path, typer.Option(help="the releases folder")],
    signing_key: Annotated[Path, typer.Option(help="the publisher's Ed25519 key")],
) -> None:
    """Publish the newest release again, as the next release, carrying these experiments.
    One with the id of an experiment already carried replaces it (a new salt re-draws every
    device's arm). Devices that install it serve their arms; a deployment run started from
    it measures them."""
    from stamen.errors import ConfigError

    experiments = [read_experiment(f) for f in files]
    ids = [e.id for e in experiments]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"experiment ids repeat among the files ({ids})")

    def change(before: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for old in before:
            new = next((e for e in experiments if e.id == old.get("id")), None)
            if new is not None and new.to_json() != old:
                salt = " (a new salt: every device re-draws its arm)"
                typer.echo(
                    f"replaces experiment {new.id}" + (salt if new.salt != old.get("salt") else ""),
                    err=True,
                )
        kept = [e for e in before if e.get("id") not in ids]
        return kept + [e.to_json() for e in experiments]

    _republish(releases, signing_key, change)


@experiment_app.command()
def end(
    ids: Annotated[list[str], typer.Argument(help="the ids of the experiments to end")],
    releases: Annotated[Path, typer.Option(help="the releases folder")],
    signing_key: Annotated[Path, typer.Option(help="the publisher's Ed25519 key")],
) -> None:
    """Publish the newest release again, as the next release, without these experiments:
    devices that install it serve the app's own settings again, and a run started from it
    no longer measures them."""
    from stamen.errors import ConfigError

    def change(before: list[dict[str, Any]]) -> list[dict[str, Any]]:
        carried = [e.get("id") for e in before]
        unknown = [i for i in ids if i not in carried]
        if unknown:
            raise ConfigError(
                f"the newest release carries no experiment {unknown} "
                f"(it carries: {', '.join(map(str, carried)) or 'none'})"
            )
        return [e for e in before if e.get("id") not in ids]

    _republish(releases, signing_key, change)


@experiment_app.command()
def candidates(
    file: Annotated[
        Path | None,
        typer.Argument(help="the candidate policies' definition (JSON or TOML)"),
    ] = None,
    *,
    releases: Annotated[Path, typer.Option(help="the releases folder")],
    signing_key: Annotated[Path, typer.Option(help="the publisher's Ed25519 key")],
    none: Annotated[
        bool, typer.Option("--none", help="publish the next release without candidate policies")
    ] = False,
) -> None:
    """Publish the newest release again, as the next release, carrying these candidate
    policies (replacing any it carries): no device serves them; a deployment run started
    from it estimates each one's value off-policy, on the devices' own impression logs, at
    every experiment measurement (experiment-every)."""
    from stamen.errors import ConfigError
    from stamen.models.off_policy import CANDIDATES_EXTRA

    if (file is None) == (not none):
        raise ConfigError("give a candidates file, or --none to publish without candidates")
    chosen = [] if file is None else [c.to_json() for c in read_candidates(file)]

    def change(before: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if none and not before:
            raise ConfigError("the newest release carries no candidate policies: nothing to end")
        return chosen

    _republish(releases, signing_key, change, key=CANDIDATES_EXTRA)


@experiment_app.command()
def simulate(
    file: Annotated[Path, typer.Argument(help="the experiment's definition (JSON or TOML)")],
    population: Annotated[int, typer.Option(help="simulated people", min=100)] = 10_000,
    epsilon: Annotated[
        float, typer.Option(help="the measurement's ε (inf: no noise); δ = 1/population")
    ] = 1.0,
    repetitions: Annotated[int, typer.Option(help="repeated experiments", min=2)] = 200,
    seed: Annotated[int, typer.Option(help="the simulation's seed")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Run the experiment many times on simulated people who respond to what their arm
    shows, with one private measurement each, and print every treatment's true effect, mean
    estimate, rejection rate (the power; for a true effect of 0, the false-positive rate) and
    interval coverage: how many people an experiment needs at this ε. The simulator models
    the 'explore' override and the four metrics only (not the guardrails); the first arm is
    the control."""
    from stamen.models.experiments import METRICS, MetricBounds
    from stamen.simulation.experiments.batched import (
        clear_sums,
        estimates,
        experiment_privacy,
        release,
    )
    from stamen.simulation.experiments.response import (
        ResponseModel,
        synthetic_population,
        true_means,
        variant_lists,
        variant_response,
    )

    experiment = read_experiment(file)
    if experiment.guardrails:
        typer.echo(
            f"guardrails {', '.join(experiment.guardrails)}: not simulated; the figures are "
            "those of the experiment without them (each guardrail adds noise at the same ε)",
            err=True,
        )
    if not epsilon > 0:
        raise typer.BadParameter(f"must be positive (got {epsilon})", param_hint="--epsilon")
    model, bounds = ResponseModel(), MetricBounds()
    people = synthetic_population(population, seed=seed)
    lists = [variant_lists(people, dict(arm.overrides), seed=seed) for arm in experiment.arms]
    responses = [variant_response(people, shown, model) for shown in lists]
    truth = true_means(people, responses, model, bounds)
    clear = clear_sums(
        people,
        responses,
        experiment,
        repetitions=repetitions,
        seed=seed,
        model=model,
        bounds=bounds,
    )
    privacy = experiment_privacy(epsilon, "distributed", population)
    try:
        released = release(clear, privacy=privacy, population=population, seed=seed)
    except ValueError as error:  # Opacus: no noise reaches so small an ε at this δ
        raise typer.BadParameter(
            f"{epsilon:g} is too small for δ = 1/{population} ({error})", param_hint="--epsilon"
        ) from None
    found = estimates(released, bounds=bounds)
    rows: list[dict[str, Any]] = []
    for a, arm in enumerate(experiment.arms[1:], start=1):
        for j, metric in enumerate(METRICS):
            true_effect = float(truth[a][j] - truth[0][j])
            lower, upper = found["lower"][:, a, j], found["upper"][:, a, j]
            rows.append(
                {
                    "arm": arm.name,
                    "metric": metric,
                    "true_effect": true_effect,
                    "mean_effect": float(found["effect"][:, a, j].mean()),
                    "power": float((found["p_value"][:, a, j] < 0.05).mean()),
                    "coverage": float(((lower <= true_effect) & (true_effect <= upper)).mean()),
                }
            )
    result = {
        "experiment": experiment.id,
        "population": population,
        "repetitions": repetitions,
        "privacy": released.privacy,
        "effects": rows,
    }
    if as_json:
        typer.echo(json.dumps(result, default=float))
        return
    table = Table(
        title=f"{experiment.id}: {repetitions} simulated experiments of {population} people, "
        f"ε = {epsilon:g}"
    )
    for column in ("arm", "metric", "true effect", "mean estimate", "rejections", "coverage"):
        table.add_column(column, justify="left" if column in ("arm", "metric") else "right")
    for row in rows:
        table.add_row(
            row["arm"],
            row["metric"],
            f"{row['true_effect']:+.5f}",
            f"{row['mean_effect']:+.5f}",
            f"{row['power']:.3f}",
            f"{row['coverage']:.3f}",
        )
    Console().print(table)
    if any(math.isnan(row["mean_effect"]) for row in rows):
        typer.echo(
            "nan: in some repetitions an arm's noisy count of exposed people was not "
            "positive (too few people for this ε), so it has no estimate",
            err=True,
        )


def _reports(
    checkpoints: Path, *, off_policy: bool = False
) -> dict[str, list[tuple[int, dict[str, Any]]]]:
    """Every experiment measurement in ``<checkpoints>/rounds.jsonl``, by experiment id
    (``off_policy``: every off-policy evaluation, under ``off-policy``): ``(round, record)``
    in round order."""
    from stamen.errors import DataError
    from stamen.server.experiment_rounds import QUERY_PREFIX
    from stamen.server.off_policy_rounds import OFF_POLICY

    path = checkpoints / "rounds.jsonl"
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: no rounds recorded (has a run started with it?)") from None
    found: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):  # the run may be writing it now
                typer.echo(f"{path}, line {number}: incomplete, left out ({error})", err=True)
                continue
            raise DataError(f"{path}, line {number}: not JSON ({error})") from None
        if not isinstance(record, dict) or not isinstance(record.get("analytics", {}), dict):
            raise DataError(f"{path}, line {number}: not a round's record")
        for name, query in (record.get("analytics") or {}).items():
            if off_policy and name == OFF_POLICY:
                found.setdefault(name, []).append((int(record.get("round", 0)), query))
            elif not off_policy and name.startswith(QUERY_PREFIX):
                found.setdefault(name.removeprefix(QUERY_PREFIX), []).append(
                    (int(record.get("round", 0)), query)
                )
    return found


#: Which way each guardrail improves (``stamen.models.experiments.GUARDRAILS``).
_DIRECTIONS = {"diversity": "higher", "latency": "lower"}


def _number(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


@experiment_app.command()
def report(
    checkpoints: Annotated[Path, typer.Argument(help="the deployment run's checkpoints folder")],
    experiment: Annotated[
        str | None, typer.Option(help="only this experiment (default: every one measured)")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="also draw each effect's interval per round (PNG)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the reports as JSON")] = False,
    off_policy: Annotated[
        bool,
        typer.Option(
            "--off-policy",
            help="the latest off-policy evaluation of the release's candidate policies instead",
        ),
    ] = False,
) -> None:
    """Print each experiment's latest measurement: every arm's exposed people and means,
    every treatment's effect with its interval and p-value, and the ε it spent (with
    --off-policy: the logging policy's value and each candidate's IPS and SNIPS estimates
    with their intervals, effects and ε). Exit 2 when the run measured none, 1 when a
    latest measurement failed (it says why)."""
    from stamen.errors import DataError

    if off_policy:
        if experiment is not None or plot is not None:
            raise DataError("--off-policy prints the evaluation alone: no --experiment, --plot")
        _report_off_policy(checkpoints, as_json=as_json)
        return
    if plot is not None and not plot.parent.is_dir():
        raise DataError(f"--plot {plot}: no folder {plot.parent}")
    found = _reports(checkpoints)
    if experiment is not None:
        if experiment not in found:
            measured = ", ".join(found) or "none"
            raise DataError(f"{checkpoints}: experiment {experiment!r} not measured ({measured})")
        found = {experiment: found[experiment]}
    if not found:
        hint = (
            " (it evaluated candidate policies: --off-policy)"
            if _reports(checkpoints, off_policy=True)
            else ""
        )
        raise DataError(f"{checkpoints}: no experiment measured in this run{hint}")
    latest = {name: history[-1] for name, history in found.items()}
    if as_json:
        typer.echo(json.dumps({name: {"round": r, **q} for name, (r, q) in latest.items()}))
    else:
        console = Console()
        for name, (rnd, query) in latest.items():
            _print_report(console, name, rnd, query)
    if plot is not None:
        _plot(found, plot)
    if any("report" not in query for _, query in latest.values()):
        raise SystemExit(1)


def _report_off_policy(checkpoints: Path, *, as_json: bool) -> None:
    """``report --off-policy``: the run's latest off-policy evaluation."""
    from stamen.errors import DataError

    found = _reports(checkpoints, off_policy=True)
    if not found:
        raise DataError(
            f"{checkpoints}: no off-policy evaluation in this run (its starting release "
            "carries no candidate policies, or experiment-every was not set): publish them "
            "with stamen experiment candidates and start a run from that release"
        )
    ((name, history),) = found.items()
    rnd, query = history[-1]
    if as_json:
        typer.echo(json.dumps({"round": rnd, **query}))
    else:
        _print_off_policy(Console(), rnd, query)
    if "report" not in query:
        raise SystemExit(1)


def _print_off_policy(console: Console, rnd: int, query: dict[str, Any]) -> None:
    body = query.get("report")
    if body is None:
        why = query.get("failed") or query.get("skipped") or "no sum released"
        console.print(f"off-policy evaluation, round {rnd}: not measured ({why})")
        return
    console.print(
        f"off-policy evaluation, round {rnd}: {query.get('devices', '?')} devices answered; "
        f"{_spent(body.get('privacy') or {})}; noise std {body['noise_std']:.3g} per summed entry"
    )
    level = 1 - float(body["alpha"])
    log = body["logging"]
    console.print(
        f"logging policy: {_number(log['value'], '.4f')} engagements per slot "
        f"[{_number(log['lower'], '.4f')}, {_number(log['upper'], '.4f')}] ({level:.0%})"
    )
    table = Table(title=f"candidates against the logging policy ({level:.0%} intervals)")
    columns = ("candidate", "estimator", "value", "interval", "effect", "interval ", "p-value")
    for column in columns:
        table.add_column(column, justify="left" if column in columns[:2] else "right")
    for c in body["candidates"]:
        table.add_row(
            c["candidate"],
            c["estimator"],
            _number(c["value"], ".4f"),
            f"[{_number(c['lower'], '.4f')}, {_number(c['upper'], '.4f')}]",
            _number(c["effect"], "+.4f"),
            f"[{_number(c['effect_lower'], '+.4f')}, {_number(c['effect_upper'], '+.4f')}]",
            _number(c["p_value"], ".3g"),
        )
    console.print(table)


def _spent(privacy: dict[str, Any]) -> str:
    """A report's privacy as ``ε = …, δ = …`` (or ``no noise``)."""
    eps = privacy.get("epsilon")
    spent = "no noise" if eps is None or eps == math.inf else f"ε = {eps:.3g}"
    if privacy.get("delta") is not None:
        spent += f", δ = {privacy['delta']:.2g}"
    return spent


def _print_report(console: Console, name: str, rnd: int, query: dict[str, Any]) -> None:
    body = query.get("report")
    if body is None:
        why = query.get("failed") or query.get("skipped") or "no sum released"
        console.print(f"experiment {name}, round {rnd}: not measured ({why})")
        return
    console.print(
        f"experiment {name}, round {rnd}: {query.get('devices', '?')} devices answered; "
        f"{_spent(body.get('privacy') or {})}; noise std {body['noise_std']:.3g} per summed entry"
    )
    arms = Table(title="arms")
    metrics = list(body["arms"][0]["means"])
    for column in ("arm", "exposed", *metrics):
        arms.add_column(column, justify="left" if column == "arm" else "right")
    for arm in body["arms"]:
        arms.add_row(
            arm["name"],
            _number(arm["exposed"], ".0f"),
            *(
                f"{_number(arm['means'][m], '.4f')} ± {_number(arm['stderrs'][m], '.4f')}"
                for m in metrics
            ),
        )
    console.print(arms)
    level = 1 - float(body["alpha"])
    monitoring = body.get("monitoring") or {}
    watched = {(e["arm"], e["metric"]): e for e in monitoring.get("effects", [])}
    cuped = {(e["arm"], e["metric"]): e for e in (body.get("cuped") or {}).get("effects", [])}
    title = f"effects against {body['control']} ({level:.0%} intervals)"
    if monitoring:
        title += f"; look {monitoring['look']} of {monitoring['looks']} (sequential boundary)"
    columns = ["arm", "metric", "effect", "interval", "p-value", "lift"]
    columns += ["CUPED effect", "CUPED interval", "CUPED p-value", "variance"] if cuped else []
    columns += ["z", "boundary", "decision"] if watched else []
    effects = Table(title=title)
    for column in columns:
        effects.add_column(column, justify="left" if column in ("arm", "metric") else "right")
    for e in body["effects"]:
        row = [
            e["arm"],
            e["metric"],
            _number(e["effect"], "+.4f"),
            f"[{_number(e['lower'], '+.4f')}, {_number(e['upper'], '+.4f')}]",
            _number(e["p_value"], ".3g"),
            _number(e["lift"], "+.1%"),
        ]
        if cuped:
            row += _cuped_cells(e, cuped[(e["arm"], e["metric"])])
        if watched:
            w = watched.get((e["arm"], e["metric"]), {})
            decision = "stop: differs" if w.get("stopped") else "continue"
            row += [_number(w.get("z"), "+.2f"), _number(w.get("bound"), ".2f"), decision]
        effects.add_row(*row)
    console.print(effects)
    guarded = [m for m in metrics if m in _DIRECTIONS]
    if guarded:
        console.print(
            "Guardrails: "
            + ", ".join(f"{m} ({_DIRECTIONS[m]} is better)" for m in guarded)
            + "; a significant effect the other way is harm.",
            soft_wrap=True,
        )
    if cuped:
        console.print(
            "CUPED: adjusted with each metric's pre-period value (theta "
            + ", ".join(f"{m} {_number(t, '.3f')}" for m, t in body["cuped"]["theta"].items())
            + "); 'variance' is the adjusted effect's variance against the unadjusted one's."
        )
    if watched:
        console.print(
            "With monitoring, read the decision, not the p-value: a look's p-value alone "
            "does not account for looking at every measurement."
        )


def _cuped_cells(plain: dict[str, Any], adjusted: dict[str, Any]) -> list[str]:
    """A CUPED-adjusted effect's cells: effect, interval, p-value and the change of its
    variance against the unadjusted effect's."""
    change = None
    if adjusted["stderr"] is not None and plain["stderr"]:
        change = (adjusted["stderr"] / plain["stderr"]) ** 2 - 1
    return [
        _number(adjusted["effect"], "+.4f"),
        f"[{_number(adjusted['lower'], '+.4f')}, {_number(adjusted['upper'], '+.4f')}]",
        _number(adjusted["p_value"], ".3g"),
        _number(change, "+.0%"),
    ]


def _plot(found: dict[str, list[tuple[int, dict[str, Any]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[tuple[str, str, str], list[tuple[int, float, float, float]]] = {}
    for name, history in found.items():
        for rnd, query in history:
            for e in (query.get("report") or {}).get("effects", []):
                if None not in (e["effect"], e["lower"], e["upper"]):
                    key = (name, e["arm"], e["metric"])
                    series.setdefault(key, []).append((rnd, e["effect"], e["lower"], e["upper"]))
    if not series:
        from stamen.errors import DataError

        raise DataError(f"--plot {path}: no measured effect with an interval: nothing to plot")
    figure, axes = plt.subplots(len(series), 1, figsize=(7, 2.4 * len(series)), squeeze=False)
    for axis, ((name, arm, metric), points) in zip(axes[:, 0], sorted(series.items()), strict=True):
        rounds = [p[0] for p in points]
        axis.errorbar(
            rounds,
            [p[1] for p in points],
            yerr=[[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]],
            fmt="o",
            capsize=3,
        )
        axis.axhline(0.0, color="grey", linewidth=0.8)
        axis.set_title(f"{name}: {arm} − control, {metric}", fontsize=9)
        axis.set_xlabel("round")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    typer.echo(f"plot in {path}", err=True)
