"""The ``stamen`` command line.

Every command imports what it needs when it runs (Flower, Ray and torch only where a
command trains or evaluates), so ``stamen device …`` and ``stamen --help`` start at once.
"""

from typing import TYPE_CHECKING, Annotated

import typer

from stamen.errors import StamenError
from stamen.simulation.cli.certs import certs_app
from stamen.simulation.cli.data import data_app
from stamen.simulation.cli.deploy import deploy_app
from stamen.simulation.cli.device import device_app
from stamen.simulation.cli.experiment import experiment_app
from stamen.simulation.cli.options import settings_options
from stamen.simulation.cli.release import release_app
from stamen.simulation.cli.sweep import sweep

if TYPE_CHECKING:
    from stamen.simulation.config import SimulationConfig

__all__ = ["app", "main", "simulate"]

#: What a command reports as a one-line error (exit status 2) instead of a traceback:
#: everything Stamen raises on purpose (the tree of :mod:`stamen.errors`).
_USER_ERRORS = StamenError

app = typer.Typer(
    name="stamen",
    help="Stamen: a privacy-preserving, federated, on-device recommender.",
    no_args_is_help=True,
    add_completion=False,
    suggest_commands=False,  # click suggests a command itself: Typer's would say it twice
)


def _print_version(value: bool) -> None:
    if value:
        import stamen

        typer.echo(f"stamen {stamen.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="print Stamen's version and exit",
        ),
    ] = False,
) -> None:
    """Stamen: a privacy-preserving, federated, on-device recommender."""


@app.command()
@settings_options()
def simulate(
    settings: "SimulationConfig",
    *,
    verbose: Annotated[bool, typer.Option(help="show Flower's and Ray's logs")] = False,
) -> None:
    """Federated training on Flower's simulation engine (or --engine batched), against
    popularity and centralised MF."""
    from stamen.simulation.experiment import run_experiment
    from stamen.simulation.protocol.report import wide_console

    run_experiment(settings, console=wide_console(), verbose=verbose)


app.command("sweep")(sweep)
app.add_typer(data_app)
app.add_typer(device_app)
app.add_typer(certs_app)
app.add_typer(release_app)
app.add_typer(deploy_app)
app.add_typer(experiment_app)


def main() -> None:
    """Entry point of the ``stamen`` script."""
    try:
        app()
    except _USER_ERRORS as err:  # errors of the device commands
        typer.echo(f"error: {err}", err=True)
        raise SystemExit(2) from None
