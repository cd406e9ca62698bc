"""``stamen sweep``: a grid of ``stamen simulate`` runs (seeds × settings), resumable, with
one table across runs (the logic: :mod:`stamen.simulation.sweep`). Nothing is imported
before the command runs, so ``stamen --help`` stays light."""

from pathlib import Path
from typing import Annotated

import typer

from stamen.errors import StamenError

__all__ = ["sweep"]


def sweep(
    sweep_file: Annotated[
        Path,
        typer.Argument(
            metavar="SWEEP_FILE",
            help="TOML sweep file: base config, seeds and [variants.NAME] or [grid]",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", help="folder of the runs (OUT/<variant>/seed-<n>/) and the summary"),
    ],
    engine: Annotated[
        str | None,
        typer.Option(
            help="flower or batched for every run, over the base config (a variant that "
            "names its own engine keeps it)"
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="run again (replacing its files) a run whose folder holds another config's "
            "results",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="print the grid and the runs to do or skip; run nothing"),
    ] = False,
) -> None:
    """A grid of `stamen simulate` runs (seeds × settings), with one table across them.

    Every variant runs at every seed into OUT/<variant>/seed-<n>/, skipping runs already
    complete with the same config; then OUT/sweep.md, sweep.json and sweep.png give mean ±
    std per variant. Exit 1 if a run failed (the others still run)."""
    from stamen.simulation.sweep import describe, load_sweep, plan_runs, run_sweep

    try:
        parsed = load_sweep(sweep_file)
        runs = plan_runs(parsed, out, engine=engine)
        if dry_run:
            for line in describe(parsed, runs, force=force):
                typer.echo(line)
            return
        result = run_sweep(parsed, runs, out, force=force, say=typer.echo)
    except StamenError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(f"table:  {result.table}\nrecord: {result.record}")
    typer.echo(f"plot:   {result.plot}" if result.plot else "plot:   none (see the table's notes)")
    if result.failed:
        typer.echo(f"{len(result.failed)} of {len(runs)} runs failed:", err=True)
        for outcome in result.failed:
            run = outcome.run
            typer.echo(f"  {run.variant} seed {run.seed}: {outcome.error}", err=True)
        raise typer.Exit(code=1)
