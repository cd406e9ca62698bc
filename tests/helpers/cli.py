"""The ``stamen`` command as the CLI tests run it: on a wide console (so that rich does not
wrap a long temporary path inside a phrase), a run that must succeed, and one that must stop
on a Stamen error naming given phrases."""

from __future__ import annotations

from click.testing import Result
from typer.testing import CliRunner

from stamen.errors import StamenError
from stamen.simulation.cli.commands import app

runner = CliRunner()


def invoke(args: list[str]) -> Result:
    """``stamen <args>`` on a 400-column console."""
    return runner.invoke(app, args, env={"COLUMNS": "400"})


def refused(result: Result, *phrases: str) -> None:
    """The command stopped on a Stamen error (``stamen`` exits 2 with it) naming each
    phrase."""
    assert isinstance(result.exception, StamenError), (result.output, result.exception)
    for phrase in phrases:
        assert phrase in str(result.exception), (phrase, str(result.exception))


def ok(args: list[str]) -> str:
    """The output of ``stamen <args>``, which must exit 0."""
    result = invoke(args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output
