"""The test tree mirrors the packages (``tests/models`` for ``stamen.models`` and so on;
``tests/integration`` holds every test that runs Flower, Ray or loopback servers, all
marked slow). pytest imports the test modules in ``importlib`` mode (pyproject.toml), so
files in different folders may share a name; the helpers the tests share live in the
``helpers`` package beside this file, importable once this folder is on ``sys.path``
(``from helpers.static_clients import StaticClients``). The one fixture every folder
shares: ``nginx``, for the tests of the closed control plane's proxy."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)


@pytest.fixture(scope="module")
def nginx() -> str:
    """The nginx binary (``stamen.server.proxy.find_nginx``); without one the test fails,
    never skips (``make test`` installs it)."""
    from stamen.errors import ConfigError
    from stamen.server.proxy import find_nginx

    try:
        return find_nginx()
    except ConfigError as error:
        pytest.fail(str(error))
