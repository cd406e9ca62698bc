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

``stamen deploy proxy-config FOLDER --certs CERTS --superlink 127.0.0.1:9092
--device-address 0.0.0.0:9443`` writes an nginx configuration that closes the control
plane (``stamen.server.proxy``): devices reach the Fleet API only, through the
device-facing address; the Control API stays on the SuperLink's loopback address or an
``--operator-address`` open to ``--operator-allow`` networks only.
"""

import json
import shlex
import time
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["check", "deploy_app", "proxy_config", "status"]

deploy_app = typer.Typer(
    name="deploy",
    help="Check a deployment run's config; follow its outcome; close its control plane.",
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
        for warning in body.get("warnings", []):
            typer.echo(f"warning: {warning}", err=True)
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


@deploy_app.command("proxy-config")
def proxy_config(
    folder: Annotated[Path, typer.Argument(help="the proxy's folder (created): nginx.conf, logs")],
    certs: Annotated[
        Path, typer.Option(help="the `stamen certs make` folder (ca.crt, superlink.crt/.key)")
    ],
    superlink: Annotated[
        str, typer.Option(help="the SuperLink's host:port (its --host 127.0.0.1 --port)")
    ],
    device_address: Annotated[
        str, typer.Option(help="host:port devices reach: the Fleet API only")
    ],
    operator_address: Annotated[
        str | None,
        typer.Option(help="host:port of an operator-facing listener: the Control API only"),
    ] = None,
    operator_allow: Annotated[
        list[str] | None,
        typer.Option(
            "--operator-allow",
            help="a source address or network allowed on --operator-address (repeatable)",
        ),
    ] = None,
    superlink_name: Annotated[
        str | None,
        typer.Option(help="DNS name nginx checks in the SuperLink's certificate"),
    ] = None,
    max_body_mb: Annotated[int, typer.Option(help="largest request body, MiB")] = 256,
    force: Annotated[bool, typer.Option("--force", help="replace nginx.conf")] = False,
) -> None:
    """Write an nginx configuration: devices reach only the Fleet API, the Control API
    (enrolment, runs) only the operator; print the commands that start and stop it."""
    from stamen.server.proxy import write_proxy_config

    paths = write_proxy_config(
        folder,
        certs=certs,
        superlink=superlink,
        device_address=device_address,
        operator_address=operator_address,
        operator_allow=operator_allow or (),
        superlink_name=superlink_name,
        max_body_mb=max_body_mb,
        force=force,
    )
    typer.echo(f"wrote {paths.config}")
    typer.echo(f"device-facing   https://{paths.device_address}  /v1/fleet/ only")
    if paths.operator_address is not None:
        typer.echo(f"operator-facing https://{paths.operator_address}  /v1/control/ only")
    typer.echo(f"SuperLink       https://{superlink}  (keep it on 127.0.0.1)")
    typer.echo(f"start: {shlex.join(paths.command())}")
    typer.echo(f"stop:  {shlex.join(paths.stop_command())}")
