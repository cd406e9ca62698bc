"""The ``stamen`` command line."""

from stamen.simulation.cli.commands import app, main

__all__ = ["app", "main"]
