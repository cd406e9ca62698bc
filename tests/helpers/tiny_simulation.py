"""The config file of a small synthetic ``stamen simulate`` run, for the end-to-end tests,
and one run of it through both engines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stamen.simulation.config import load_config
from stamen.simulation.experiment import run_experiment
from stamen.simulation.protocol.report import wide_console


def tiny_config(folder: Path, *, users: int, items: int, epochs: int, extra: str = "") -> Path:
    """Write ``folder/tiny.toml``: ``users`` synthetic users of ``items`` items, MF of
    dimension 8 with 3 refresh steps, centralised MF for ``epochs`` epochs, and the
    top-level lines ``extra``; return its path."""
    path = folder / "tiny.toml"
    path.write_text(
        f"synthetic-users = {users}\nsynthetic-items = {items}\n{extra}"
        f"[local]\ndim = 8\nrefresh-steps = 3\n[centralised]\nepochs = {epochs}\n"
    )
    return path


def on_both_engines(path: Path, given: dict[str, Any], folder: Path) -> dict[str, dict]:
    """The ``results.json`` records of the config at ``path`` with ``given`` run on
    Flower's engine and on the batched engine (outputs in ``folder/<engine>``)."""
    return {
        engine: run_experiment(
            load_config(path, {**given, "engine": engine, "output": folder / engine}),
            console=wide_console(),
        ).results
        for engine in ("flower", "batched")
    }
