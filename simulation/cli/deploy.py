"""``stamen deploy``: what an operator scripts around a deployment run.

Flower 1.42 reports every run as completed (``flwr ls``, and ``flwr run`` exits 0), even
when Stamen's ServerApp stopped on a failed round or an exception. The ServerApp records
each run's outcome in ``<checkpoints>/status.json`` (``stamen.server.deployment.RunStatus``);
``stamen deploy status`` reads it and exits with it:

    0   the run completed
    1   the run failed (the reason is printed)
    3   the run is still running (without ``--wait``), or ``--wait`` timed out
    2   no status to read, or not the run asked for (``--run-id``)

``stamen deploy check APP --run-config "..."`` checks a run config before ``flwr run``
sends it: Flower refuses a key the app does not declare with "Invalid run configuration"
and no name, and a bad value surfaces only once the run has started; this names each
(exit 2), as the operator wrote it.
"""

import json
import time
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["check", "deploy_app", "status"]

deploy_app = typer.Typer(
    name="deploy",
    help="Check a deployment run's config; follow its outcome.",
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


@deploy_app.command()
def check(
    app: Annotated[Path, typer.Argument(help="the Flower App folder `flwr run` is given")],
    run_config: Annotated[
        str, typer.Option("--run-config", help="what `flwr run --run-config` will be given")
    ] = "",
) -> None:
    """Check a run config against the app before `flwr run`: every key declared, every
    value valid (exit 0), or each problem named as written (exit 2)."""
    import difflib
    import tomllib

    from flwr.common.config import parse_config_args

    from stamen.errors import ConfigError
    from stamen.server.deployment import Deployment

    pyproject = app / "pyproject.toml"
    try:
        declared = tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{pyproject}: not a Flower App's pyproject.toml ({error})") from None
    try:
        given = parse_config_args([run_config]) if run_config else {}
    except ValueError as error:
        raise ConfigError(f"--run-config: does not parse ({error})") from None
    unknown = [key for key in given if key not in declared]
    if unknown:
        named = []
        for key in unknown:
            close = difflib.get_close_matches(key, list(declared), n=1)
            named.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(
            f"run config: {', '.join(named)}: not a key of {pyproject}; Flower would refuse "
            'the run with "Invalid run configuration"'
        )
    config = {**declared, **given}
    Deployment({key: value for key, value in config.items() if key != "runtime"})
    typer.echo(f"run config: {len(given)} keys set, every key and value valid for {app}")
