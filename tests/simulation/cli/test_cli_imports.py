"""The ``stamen`` commands import lazily: ``stamen --help``, ``stamen device --help`` and
``stamen device recommend`` load neither Flower nor Ray nor Opacus (checked on the
``sys.modules`` of a fresh interpreter; the time of ``--help`` is measured by hand, not here,
because this machine is shared)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.signed_releases import film_release
from typer.testing import CliRunner

from stamen.simulation.cli.commands import app

HEAVY = {"flwr", "ray", "opacus"}

#: Runs the ``stamen`` entry point on ``sys.argv[1:]`` in a fresh interpreter, then prints
#: its exit status and the top-level packages it imported, as JSON on the last line.
_RUN = """
import json, sys
from stamen.simulation.cli.commands import main
sys.argv = ["stamen", *sys.argv[1:]]
try:
    main()
    code = 0
except SystemExit as stop:
    code = stop.code or 0
print(json.dumps({"code": code, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def _stamen(*args: str) -> tuple[str, set[str]]:
    done = subprocess.run(
        [sys.executable, "-c", _RUN, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )
    *output, last = done.stdout.rstrip("\n").split("\n")
    report = json.loads(last)
    assert report["code"] == 0, (done.stdout, done.stderr)
    return "\n".join(output), set(report["modules"])


@pytest.fixture
def device(tmp_path: Path) -> Path:
    """A device folder holding one event and a signed MF release of 30 films."""
    bundle = film_release(tmp_path, 1)
    folder = tmp_path / "phone"
    public = tmp_path / "releases" / "release.pub"
    runner = CliRunner()
    for args in (
        ["device", "init", str(folder), "--release-key", str(public)],
        ["device", "record", str(folder), "3", "play"],
        ["device", "apply", str(folder), str(bundle)],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    return folder


@pytest.mark.parametrize("command", [["--help"], ["device", "--help"], ["certs", "--help"]])
def test_help_loads_no_framework(command: list[str]) -> None:
    output, modules = _stamen(*command)
    assert "Usage" in output
    assert modules & (HEAVY | {"torch"}) == set()


def test_device_recommend_loads_neither_flower_nor_ray_nor_opacus(device: Path) -> None:
    output, modules = _stamen("device", "recommend", str(device), "--k", "3")
    assert "recommendations (release 1)" in output and "Because you played Film 3" in output
    assert modules & HEAVY == set()
