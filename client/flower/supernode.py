"""``stamen-supernode``: Flower's SuperNode (``flower-supernode``, same flags) waiting a
shorter time between its pulls from the SuperLink.

Flower 1.42's SuperNode sleeps 3 s whenever a pull from the SuperLink finds no message
and checks for a ClientApp's reply every 0.5 s (both fixed in
``flwr.supernode.start_client_internal``). Every message of a round waits for that: one
for a plain round, four for a SecAgg+ round, so a SecAgg+ round cannot take under about
6 s whatever the devices compute. This command runs Flower's SuperNode with those waits
capped at ``STAMEN_SUPERNODE_POLL_S`` seconds (default 0.2). The price is load on the
SuperLink: an idle SuperNode pulls ``1 / STAMEN_SUPERNODE_POLL_S`` times a second
instead of a third of a time, so size it against the number of SuperNodes one SuperLink
serves (README, Deployment).

The change is made where Flower's loop looks up ``time``: the module's ``time`` is
replaced by one whose ``sleep`` is capped. The command refuses to start if the installed
Flower's SuperNode no longer has the waits it expects.

It also exits when Flower's SuperNode loop ends. In Flower 1.42 a request the SuperLink
answers with a 500 (its SQLite state's "database is locked"; docs/operator.md) raises out
of the loop, which deactivates the node, but the SuperNode's Runtime API thread keeps the
process alive: a supervisor sees a running SuperNode that has left the federation. Here the
loop's error ends the process through Flower's own exit path (its exit handlers stop that
thread) with ``SUPERNODE_CONNECTION_ERROR`` (exit status 1), so a supervisor restarts it.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import time
from typing import Any

__all__ = ["CappedSleep", "main"]

_EXPECTED = ("time.sleep(3)", "time.sleep(0.5)")


class CappedSleep:
    """``time`` with ``sleep`` capped at ``cap`` seconds (everything else as ``time``)."""

    def __init__(self, cap: float) -> None:
        self.cap = cap

    def sleep(self, seconds: float) -> None:
        """Sleep ``min(seconds, cap)``."""
        time.sleep(min(seconds, self.cap))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def _cap() -> float:
    raw = os.environ.get("STAMEN_SUPERNODE_POLL_S", "0.2")
    try:
        cap = float(raw)
    except ValueError:
        cap = -1.0
    if not 0.01 <= cap <= 3.0:
        sys.exit(f"STAMEN_SUPERNODE_POLL_S must be seconds in [0.01, 3] (got {raw!r})")
    return cap


def main() -> None:
    """``stamen-supernode``: Flower's ``flower-supernode`` with capped waits."""
    cap = _cap()
    loop = importlib.import_module("flwr.supernode.start_client_internal")
    source = inspect.getsource(loop)
    missing = [line for line in _EXPECTED if line not in source]
    if missing or not hasattr(loop, "time"):
        import flwr

        sys.exit(
            f"stamen-supernode: Flower {flwr.__version__}'s SuperNode no longer waits as "
            f"1.42 did ({missing} not found); run flower-supernode instead"
        )
    loop.time = CappedSleep(cap)  # type: ignore[attr-defined]
    from flwr.supercore.exit import ExitCode, flwr_exit
    from flwr.supernode.cli.flower_supernode import flower_supernode

    try:
        flower_supernode()
    except Exception as error:  # the loop's end: leave, do not linger disconnected
        flwr_exit(
            ExitCode.SUPERNODE_CONNECTION_ERROR,
            f"stamen-supernode: the SuperNode stopped ({type(error).__name__}: {error}); "
            "exiting so that a supervisor restarts it",
        )
