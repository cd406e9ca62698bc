"""Every test in this folder runs Flower (its simulation engine, ``flwr run``, a SuperLink
and SuperNodes on the loopback interface) or Ray: all are marked slow, whether or not the
file says so, and ``pytest -m "not slow"`` collects none of them. ``cpu_hog`` loads the
machine for the tests that must hold on a busy one."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.loopback import stop

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark slow every test collected from this folder (before ``-m`` selects)."""
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.slow)


#: Busy processes ``cpu_hog`` runs: as many as the two cores of the machines the suite runs on.
HOGS = 2


@pytest.fixture
def cpu_hog() -> Iterator[None]:
    """``HOGS`` processes spinning in a loop for the length of the test (a machine whose
    cores are all taken), each stopped after it."""
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
        for _ in range(HOGS)
    ]
    try:
        yield
    finally:
        for hog in hogs:
            stop(hog)
