"""``stamen-superexec``: Flower's SuperExec for a SuperNode, starting each ClientApp task
in a process that has already imported torch and Stamen's device code.

Flower's SuperExec starts a fresh ``flwr-clientapp`` process for every message; each one
starts Python, imports Flower and, for a training message, torch (seconds on a small
machine, most of a round's time). Run with ``flower-supernode --isolation process``,
this SuperExec does what Flower's does (it is Flower's ``flower-superexec``, same flags),
except that it imports torch and ``stamen.client`` once and starts each ClientApp task
by ``fork()``: the child runs Flower's own ``run_clientapp`` for the task's token and
exits, with everything already imported. Other task types start as Flower starts them.
The parent never runs torch (so no thread pool is forked half-started), and Flower's
telemetry is off in it (a telemetry thread could hold a lock across the fork).

    flower-supernode --isolation process --host 127.0.0.1 --port 9094 ...
    stamen-superexec --runtime-api-address 127.0.0.1:9094 --insecure

(the Runtime API between a SuperNode and its SuperExec stays on the machine; give it
``--ssl-*`` / ``--root-certificates`` as Flower documents to encrypt it anyway).
"""

from __future__ import annotations

import os
from pathlib import Path

from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor import LaunchResult
from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
from flwr.supercore.superexec.executor.types import ExecutionSpec

__all__ = ["ForkingExecutor", "main"]


class ForkingExecutor(SubprocessExecutor):
    """Flower's subprocess executor, but ClientApp tasks start by ``fork()`` from this
    warm process (module docstring)."""

    def __init__(self) -> None:
        self._parent = os.getpid()
        self._children: set[int] = set()

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        """Fork a child that runs the ClientApp task; other tasks as Flower does."""
        if spec.task_type != TaskType.CLIENT_APP:
            return super().launch(spec)
        pid = os.fork()
        if pid == 0:  # the child: run the task, then leave without the parent's cleanup
            code = 1
            try:
                code = _run_task(spec)
            finally:
                os._exit(code)  # whatever happened, never back into the parent's loop
        self._children.add(pid)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap children that have finished (called by SuperExec's loop)."""
        for pid in list(self._children):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                self._children.discard(pid)

    def close(self) -> None:
        """Nothing to release: running tasks finish on their own (they watch the
        SuperNode through ``parent_pid``)."""


def _run_task(spec: ExecutionSpec) -> int:
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    certificates = (
        Path(spec.root_certificates_path).read_bytes() if spec.root_certificates_path else None
    )
    try:
        run_clientapp(
            runtime_api_address=spec.runtime_api_address,
            token=spec.token,
            insecure=spec.insecure,
            certificates=certificates,
            parent_pid=spec.parent_pid,
            runtime_dependency_install=spec.runtime_dependency_install,
        )
    except SystemExit as done:  # Flower's run_clientapp ends with sys.exit(code)
        return done.code if isinstance(done.code, int) else 1
    return 0


def main() -> None:
    """``stamen-superexec``: Flower's ``flower-superexec`` command with the forking
    executor (module docstring)."""
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"  # the processes it starts
    from flwr.supercore import telemetry

    telemetry.FLWR_TELEMETRY_ENABLED = "0"  # this one: Flower read the variable on import
    import torch  # noqa: F401  (imported once, here, for every task)
    from flwr.supercore.cli.flower_superexec import flower_superexec
    from flwr.supercore.superexec import run_superexec as loop

    import stamen.client.flower.app  # noqa: F401
    import stamen.client.flower.deployment  # noqa: F401

    # the one change to Flower's SuperExec: which executor its loop launches tasks with
    loop.get_executor = lambda *args, **kwargs: ForkingExecutor()
    flower_superexec()
