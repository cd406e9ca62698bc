"""Where a Flower run happens: the runtime named by the run config's ``runtime`` key.

Stamen has one Flower App (``serverapp = "stamen.server.app:server_app"``,
``clientapp = "stamen.client.flower.app:client_app"``) for every runtime; what differs is
where its devices and data come from:

- ``simulation``: the ServerApp loads a data set, provisions one virtual device per user
  and evaluates on the protocol's held-out items (``stamen.simulation.engines.flwr_app``);
- ``deployment``: the ServerApp starts from the operator's signed releases and each
  SuperNode serves the one device its ``--node-config`` names
  (``stamen.server.deployment``, ``stamen.client.flower.deployment``).

Runtimes are registered as Python entry points (``[project.entry-points]`` in
``pyproject.toml``): the group ``stamen.server_runtimes`` names each runtime's
``serve(grid, context)``, the group ``stamen.client_runtimes`` its ``ClientRuntime``. So
the server and client layers run the simulation without importing it, and a package of
one's own can add a runtime.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from stamen.errors import ConfigError

__all__ = ["CLIENT_RUNTIMES", "RUNTIME_KEY", "SERVER_RUNTIMES", "load_runtime", "without_runtime"]

#: The run-config key naming the runtime.
RUNTIME_KEY = "runtime"
#: Entry-point group of each runtime's ServerApp body, ``serve(grid, context)``.
SERVER_RUNTIMES = "stamen.server_runtimes"
#: Entry-point group of each runtime's device side (a ``ClientRuntime``).
CLIENT_RUNTIMES = "stamen.client_runtimes"


def load_runtime(group: str, run_config: Mapping[str, Any]) -> Any:
    """The object the runtime named in ``run_config`` registered under ``group``.

    Raises:
        ConfigError: no ``runtime`` key, or a runtime nobody registered (the message
            lists the registered ones).
    """
    registered = {point.name: point for point in entry_points(group=group)}
    name = run_config.get(RUNTIME_KEY)
    if name not in registered:
        known = ", ".join(sorted(registered)) or "none (is Stamen installed?)"
        what = "no 'runtime' key" if name in (None, "") else f"runtime {name!r} is unknown"
        raise ConfigError(f"run config: {what}; registered runtimes: {known}")
    return registered[str(name)].load()


def without_runtime(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """``run_config`` without the ``runtime`` key (what a runtime's own settings read)."""
    return {key: value for key, value in run_config.items() if key != RUNTIME_KEY}
