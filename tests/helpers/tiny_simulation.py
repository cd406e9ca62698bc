"""The config file of a small synthetic ``stamen simulate`` run, for the end-to-end tests."""

from __future__ import annotations

from pathlib import Path


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
