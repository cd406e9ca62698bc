"""The test tree mirrors the packages (``tests/models`` for ``stamen.models`` and so on;
``tests/integration`` holds every test that runs Flower, Ray or loopback servers, all
marked slow). pytest imports the test modules in ``importlib`` mode (pyproject.toml), so
files in different folders may share a name; the helpers the tests share live in the
``helpers`` package beside this file, importable once this folder is on ``sys.path``
(``from helpers.static_clients import StaticClients``)."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)
