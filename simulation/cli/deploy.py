"""``stamen deploy``: what an operator scripts around a deployment run.

Flower 1.42 reports every run as completed (``flwr ls``, and ``flwr run`` exits 0), even
when Stamen's ServerApp stopped on a failed round or an exception. The ServerApp records
each run's outcome in ``<checkpoints>/status.json`` (``stamen.server.deployment.RunStatus``);
``stamen deploy status`` reads it and exits with it:

    0   the run completed
    1   the run failed (the reason is printed)
    3   the run is still running (without ``--wait``), or ``--wait`` timed out
    2   no status to read, or not the run asked for (``--run-id``)
"""

import json
import time
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["deploy_app", "status"]

deploy_app = typer.Typer(
    name="deploy",
    help="Follow a deployment run's outcome.",
    no_args_is_help=True,
)

_EXIT = {"completed": 0, "failed": 1, "running": 3}


@deploy_app.command()
def status(
    checkpoints: Annotated[Path, typer.Argument(help="the run's checkpoints folder")],
    run_id: Annotated[
        int | None, typer.Option(help="the run to report (what `flwr run` printed)")
    ] = None,
    wait: Annotated[bool, typer.Option(help="wait until the run ends")] = False,
    timeout: Annotated[float, typer.Option(help="longest wait in seconds")] = 86400.0,
    as_json: Annotated[bool, typer.Option("--json", help="print the status as JSON")] = False,
) -> None:
    """Print a deployment run's outcome and exit with it (0 completed, 1 failed, 3 still
    running, 2 nothing to report)."""
    from stamen.errors import DataError
    from stamen.server.deployment import RunStatus

    deadline = time.monotonic() + timeout
    while True:
        body = RunStatus.read(checkpoints)
        if body is None and not wait:
            raise DataError(f"{checkpoints}: no run status (has a run started with it?)")
        if body is not None and run_id is not None and body["run_id"] != run_id:
            if not wait:
                raise DataError(
                    f"{checkpoints}: the status is run {body['run_id']}'s, not run {run_id}'s"
                )
        elif body is not None and (body["status"] != "running" or not wait):
            break
        if time.monotonic() >= deadline:
            typer.echo(f"{checkpoints}: still waiting after {timeout:g} s", err=True)
            raise SystemExit(3)
        time.sleep(min(2.0, max(deadline - time.monotonic(), 0.0)))
    assert body is not None
    if as_json:
        typer.echo(json.dumps(body))
    else:
        reason = f": {body['reason']}" if body.get("reason") else ""
        typer.echo(f"run {body['run_id']} {body['status']}{reason}")
    raise SystemExit(_EXIT[body["status"]])
