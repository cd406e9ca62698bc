"""Every test in this folder runs Flower (its simulation engine, ``flwr run``, a SuperLink
and SuperNodes on the loopback interface) or Ray: all are marked slow, whether or not the
file says so, and ``pytest -m "not slow"`` collects none of them."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark slow every test collected from this folder (before ``-m`` selects)."""
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.slow)
