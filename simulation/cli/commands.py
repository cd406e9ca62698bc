"""The ``stamen`` command line.

Every command imports what it needs when it runs (Flower, Ray and torch only where a
command trains or evaluates), so ``stamen device …`` and ``stamen --help`` start at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from stamen.errors import StamenError
from stamen.simulation.cli.certs import certs_app
from stamen.simulation.cli.device import device_app
from stamen.simulation.cli.release import release_app

__all__ = ["app", "main", "simulate"]

#: What a command reports as a one-line error (exit status 2) instead of a traceback:
#: everything Stamen raises on purpose (the tree of :mod:`stamen.errors`).
_USER_ERRORS = StamenError

app = typer.Typer(
    name="stamen",
    help="Stamen: a privacy-preserving, federated, on-device recommender.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Stamen: a privacy-preserving, federated, on-device recommender."""


@app.command()
def simulate(
    dataset: Annotated[
        str | None, typer.Option(help="ml-100k, ml-1m, …, lastfm-2k or synthetic")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="model family: mf or two-tower ([two-tower] section)")
    ] = None,
    algorithm: Annotated[
        str | None,
        typer.Option(help="fedavg (DP-FedAvg under --dp) or als (private ALS; [als] section)"),
    ] = None,
    rounds: Annotated[int | None, typer.Option(help="federated rounds")] = None,
    clients_per_round: Annotated[int | None, typer.Option(help="devices sampled per round")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of the split, sampling and init")] = None,
    eval_every: Annotated[
        int | None, typer.Option(help="federated evaluation period (0: last round)")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="folder holding the data sets [env STAMEN_DATA_DIR]")
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="folder for results.json, metrics.png, checkpoints")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="TOML file of settings (flags override it)")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="continue from the latest checkpoint in --output")
    ] = False,
    secure_aggregation: Annotated[
        bool | None, typer.Option(help="aggregate updates with Flower SecAgg+ (default: on)")
    ] = None,
    dp: Annotated[
        str | None, typer.Option(help="user-level DP: off, central or distributed")
    ] = None,
    epsilon: Annotated[
        float | None, typer.Option(help="target ε: sizes the noise, stops the run at the budget")
    ] = None,
    noise_multiplier: Annotated[float | None, typer.Option(help="DP noise multiplier z")] = None,
    clip_norm: Annotated[
        float | None, typer.Option(help="DP clip norm C of a device update")
    ] = None,
    record_dp_noise: Annotated[
        float | None, typer.Option(help="record-level DP-SGD on devices: noise multiplier z")
    ] = None,
    record_dp_clip: Annotated[
        float | None, typer.Option(help="record-level DP-SGD: per-record clip norm C")
    ] = None,
    record_dp_rate: Annotated[
        float | None, typer.Option(help="record-level DP-SGD: Poisson rate q of records per step")
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="a running Ray cluster (HOST:PORT of `ray start --head`) to run the devices on; "
            "--output must be on a file system every Ray node sees [default: a local Ray]"
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option(help="show Flower's and Ray's logs")] = False,
) -> None:
    """Federated MF on Flower's simulation engine, against popularity and centralised MF."""
    from stamen.simulation.config import load_config
    from stamen.simulation.experiment import run_experiment
    from stamen.simulation.protocol.report import wide_console

    console = wide_console()
    overrides: dict[str, Any] = {
        "dataset": dataset,
        "model": model,
        "algorithm": algorithm,
        "rounds": rounds,
        "clients_per_round": clients_per_round,
        "seed": seed,
        "eval_every": eval_every,
        "data_dir": data_dir,
        "output": output,
        "resume": resume or None,
        "ray_address": ray_address,
    }
    if secure_aggregation is not None:
        overrides["secagg"] = {"enabled": secure_aggregation}
    dp_overrides = {
        "mode": dp,
        "target_epsilon": epsilon,
        "noise_multiplier": noise_multiplier,
        "clip_norm": clip_norm,
    }
    if any(v is not None for v in dp_overrides.values()):
        overrides["dp"] = {k: v for k, v in dp_overrides.items() if v is not None}
    record_overrides = {
        "noise_multiplier": record_dp_noise,
        "max_grad_norm": record_dp_clip,
        "sample_rate": record_dp_rate,
    }
    if any(v is not None for v in record_overrides.values()):
        overrides["record_dp"] = {
            "enabled": True,
            **{k: v for k, v in record_overrides.items() if v is not None},
        }
    try:
        settings = load_config(config, overrides)
        run_experiment(settings, console=console, verbose=verbose)
    except _USER_ERRORS as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(code=2) from None


app.add_typer(device_app)
app.add_typer(certs_app)
app.add_typer(release_app)


def main() -> None:
    """Entry point of the ``stamen`` script."""
    try:
        app()
    except _USER_ERRORS as err:  # errors of the device commands
        typer.echo(f"error: {err}", err=True)
        raise SystemExit(2) from None
