"""Stamen's faster Flower runtime pieces, unit by unit: the forking SuperExec's executor
and ``stamen-supernode``'s capped waits (the loopback deployment test runs them whole)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor.types import ExecutionSpec

from stamen.client.flower import superexec, supernode


def _spec(task_type: TaskType) -> ExecutionSpec:
    return ExecutionSpec(
        task_type=task_type,
        runtime_api_address="127.0.0.1:1",
        token="t",
        insecure=True,
        root_certificates_path=None,
        runtime_dependency_install=False,
        parent_pid=None,
        suppress_output=True,
        task_id=1,
    )


def test_a_clientapp_task_runs_in_a_forked_child_that_is_reaped(monkeypatch) -> None:
    parent = os.getpid()

    def task(spec: ExecutionSpec) -> int:
        assert os.getpid() != parent  # in the child
        return 3

    monkeypatch.setattr(superexec, "_run_task", task)
    executor = superexec.ForkingExecutor()
    result = executor.launch(_spec(TaskType.CLIENT_APP))
    assert result.status == "accepted" and len(executor._children) == 1
    (child,) = executor._children
    deadline = time.monotonic() + 10
    while executor._children and time.monotonic() < deadline:
        executor.reconcile()
        time.sleep(0.05)
    assert not executor._children, "the finished child was not reaped"
    with pytest.raises(ChildProcessError):
        os.waitpid(child, os.WNOHANG)  # gone: reaped by reconcile


def test_other_tasks_start_as_flower_starts_them(monkeypatch) -> None:
    started = []
    monkeypatch.setattr(
        superexec.SubprocessExecutor, "launch", lambda self, spec: started.append(spec) or "ok"
    )
    assert superexec.ForkingExecutor().launch(_spec(TaskType.SERVER_APP)) == "ok"
    assert [s.task_type for s in started] == [TaskType.SERVER_APP]


def test_capped_sleep_caps_only_sleep() -> None:
    clock = supernode.CappedSleep(0.01)
    started = time.monotonic()
    clock.sleep(3)  # Flower's idle wait
    assert time.monotonic() - started < 1.0
    assert clock.monotonic() >= started  # everything else is time's


@pytest.mark.parametrize("raw", ["0", "5", "soon"])
def test_a_bad_poll_interval_is_refused(monkeypatch, raw: str) -> None:
    monkeypatch.setenv("STAMEN_SUPERNODE_POLL_S", raw)
    with pytest.raises(SystemExit, match="STAMEN_SUPERNODE_POLL_S"):
        supernode.main()


def test_a_flower_without_the_expected_waits_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(supernode.inspect, "getsource", lambda module: "while True: pass\n")
    with pytest.raises(SystemExit, match="no longer waits"):
        supernode.main()


_LOOP_ENDS = """
import importlib
import threading

from flwr.supercore.exit import add_exit_handler

from stamen.client.flower import supernode


def flower_supernode():
    # as Flower 1.42's: a non-daemon Runtime API thread that its exit handlers stop, then
    # the loop raising on a SuperLink's 500
    stop = threading.Event()
    threading.Thread(target=stop.wait, name="runtime-api").start()
    add_exit_handler(stop.set)
    raise RuntimeError("Server error '500 Internal Server Error' for url .../pull-messages")


# the module (its package exports a function of the same name)
importlib.import_module("flwr.supernode.cli.flower_supernode").flower_supernode = flower_supernode
supernode.main()
"""


def test_a_supernode_whose_loop_ends_exits_instead_of_lingering(tmp_path) -> None:
    """When Flower's SuperNode loop raises (a SuperLink's 500), the process exits with
    status 1 through Flower's exit handlers, rather than living on disconnected with its
    Runtime API thread; the bound is only there to fail the test rather than hang it."""
    script = tmp_path / "loop_ends.py"
    script.write_text(_LOOP_ENDS)
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 1, done.stderr
    output = done.stdout + done.stderr
    assert "the SuperNode stopped (RuntimeError: Server error '500" in output
