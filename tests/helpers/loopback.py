"""Processes of a loopback Flower deployment for tests: a SuperLink with TLS, SuperNodes
enrolled and started, ``flwr`` calls and runs, bounded waits, and every process (with its
children) stopped on exit."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
WAIT_S = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def flower_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # flower-superexec, by name
    env["FLWR_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.1")  # a ClientApp task is noticed sooner
    return env


def flower_home(
    home: Path, federation: str, port: int, ca_certificate: Path, **others: int
) -> dict[str, str]:
    """A Flower home whose default SuperLink connection ``federation`` reaches 127.0.0.1:
    ``port`` over TLS under ``ca_certificate``, and each connection of ``others`` (name:
    port) likewise; the environment that uses it."""
    home.mkdir()
    connections = {federation: port, **others}
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{federation}"\n'
        + "".join(
            f'[superlink.{name}]\naddress = "127.0.0.1:{to}"\n'
            f'root-certificates = "{ca_certificate}"\n'
            for name, to in connections.items()
        )
    )
    return flower_env(home)


def flwr(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``flwr <args>`` under ``env``, its output captured, at most 120 s."""
    return subprocess.run(
        [str(BIN / "flwr"), *args], env=env, capture_output=True, text=True, timeout=120
    )


def register_supernode(public_key: Path, federation: str, env: dict[str, str]) -> str:
    """Register a SuperNode's public key with the SuperLink (``flwr supernode register``);
    its node id. A SuperLink that has logged its start may not answer yet on a loaded
    machine: an unavailable connection is retried (3 tries, 2 s apart). Raises
    ``RuntimeError`` with Flower's output when it fails."""
    for attempt in range(3):
        done = flwr(env, "supernode", "register", str(public_key), federation)
        found = re.search(r"SuperNode (\d+) registered", done.stdout)
        if found is not None:
            return found.group(1)
        if "unavailable" not in done.stdout + done.stderr or attempt == 2:
            break
        time.sleep(2.0)
    raise RuntimeError(done.stdout + done.stderr)


@contextmanager
def running(command: list[str], *, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """Run ``command`` with its output in ``log``; stop it (terminate, then kill) on exit."""
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield proc
        finally:
            stop(proc)


def poll(
    check: Callable[[], bool],
    *,
    proc: subprocess.Popen,
    log: Path,
    what: str,
    wait_s: float = WAIT_S,
) -> None:
    """Wait until ``check()`` holds, at most ``wait_s``; fail with the log if ``proc``
    exits first or time runs out."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None:
            pytest.fail(f"{what}: the process exited ({proc.returncode}):\n{text(log)}")
        time.sleep(0.2)
    pytest.fail(f"{what}: not within {wait_s:.0f} s:\n{text(log)[-4000:]}")


def wait_logged(
    log: Path, phrase: str, *, proc: subprocess.Popen, what: str, wait_s: float = WAIT_S
) -> None:
    """Wait until ``log`` holds ``phrase`` (:func:`poll`)."""
    poll(lambda: phrase in text(log), proc=proc, log=log, what=what, wait_s=wait_s)


def text(log: Path) -> str:
    return log.read_text(errors="replace")


def stop(proc: subprocess.Popen) -> None:
    """Stop ``proc`` and everything it started (its session): SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # children left in the session, too
    except ProcessLookupError:
        pass
    proc.wait(timeout=15)


def superlink_command(
    certs, port: int, tmp_path: Path, *extra: str, in_memory: bool = False
) -> list[str]:
    """A TLS SuperLink on 127.0.0.1:``port`` whose state lives in ``tmp_path/state.db``
    (it survives a restart), or with ``in_memory`` in Flower's in-memory state (faster; a
    restart loses the registered nodes and runs)."""
    return [
        str(BIN / "flower-superlink"),
        *("--ssl-ca-certfile", str(certs.ca_certificate)),
        *("--ssl-certfile", str(certs.superlink_certificate)),
        *("--ssl-keyfile", str(certs.superlink_key)),
        *("--host", "127.0.0.1", "--port", str(port)),
        *("--database", ":flwr-in-memory:" if in_memory else str(tmp_path / "state.db")),
        "--disable-runtime-dependency-installation",
        *extra,
    ]


def supernode_command(
    key: Path,
    certs,
    link_port: int,
    *,
    runtime_port: int | None = None,
    forking: bool = False,
    fast_poll: bool = False,
) -> list[str]:
    """A SuperNode reaching the SuperLink at ``link_port``; ``forking``: it runs no
    SuperExec of its own (``--isolation process``) and ``stamen-superexec``, started
    apart (:func:`superexec_command`), serves its Runtime API on ``runtime_port``;
    ``fast_poll``: ``stamen-supernode`` (Flower's SuperNode with shorter waits)."""
    return [
        str(BIN / ("stamen-supernode" if fast_poll else "flower-supernode")),
        *("--superlink", f"127.0.0.1:{link_port}"),
        *("--root-certificates", str(certs.ca_certificate)),
        *("--auth-supernode-private-key", str(key)),
        *("--host", "127.0.0.1", "--port", str(runtime_port or free_port())),
        *(("--isolation", "process") if forking else ()),
    ]


def superexec_command(runtime_port: int) -> list[str]:
    """Stamen's forking SuperExec for the SuperNode whose Runtime API is ``runtime_port``."""
    return [
        str(BIN / "stamen-superexec"),
        *("--runtime-api-address", f"127.0.0.1:{runtime_port}"),
        "--insecure",
    ]


def start_superlink(
    stack: ExitStack, command: list[str], *, env: dict[str, str], log: Path, what: str
) -> subprocess.Popen:
    """The SuperLink ``command``, run in ``stack`` (:func:`running`), once it has logged its
    start."""
    link = stack.enter_context(running(command, env=env, log=log))
    wait_logged(log, "Starting Flower SuperLink", proc=link, what=what)
    return link


def start_supernode(
    stack: ExitStack,
    certs,
    d: int,
    link_port: int,
    folder: Path,
    *,
    env: dict[str, str],
    forking: bool,
    declared: int | None = None,
    node_config: str = "",
) -> list[tuple[list[str], subprocess.Popen]]:
    """SuperNode ``d`` (the key ``certs.supernodes[d]``) serving the device
    ``folder/device-<d>`` (node config ``device``, ``device-id`` ``d`` unless it
    ``declared`` another, then ``node_config``'s own entries) from the SuperLink at
    ``link_port``, its output in ``folder/node-<d>.log``; with ``forking``, Stamen's
    SuperNode with its own forking SuperExec (``folder/exec-<d>.log``)
    (:func:`supernode_command`). Each process run in ``stack`` with its command, the
    SuperNode's first."""
    runtime = free_port()
    command = supernode_command(
        certs.supernodes[d].private_key,
        certs,
        link_port,
        runtime_port=runtime,
        forking=forking,
        fast_poll=forking,
    )
    device_id = d if declared is None else declared
    config = f"device='{folder / f'device-{d}'}' device-id={device_id} {node_config}"
    command += ["--node-config", config.strip()]
    started = [
        (command, stack.enter_context(running(command, env=env, log=folder / f"node-{d}.log")))
    ]
    if forking:
        superexec = superexec_command(runtime)
        log = folder / f"exec-{d}.log"
        started.append((superexec, stack.enter_context(running(superexec, env=env, log=log))))
    return started


def enrol_supernodes(
    stack: ExitStack,
    certs,
    count: int,
    link_port: int,
    folder: Path,
    *,
    federation: str,
    env: dict[str, str],
    forking: bool,
) -> tuple[list[str], list[list[tuple[list[str], subprocess.Popen]]]]:
    """Register the keys of SuperNodes ``0 … count - 1`` through the connection
    ``federation`` (:func:`register_supernode`), then start each (:func:`start_supernode`);
    their node ids, and what each started."""
    ids = [
        register_supernode(certs.supernodes[d].public_key, federation, env) for d in range(count)
    ]
    started = [
        start_supernode(stack, certs, d, link_port, folder, env=env, forking=forking)
        for d in range(count)
    ]
    return ids, started


def wait_activated(node_ids: list[str], *, link: subprocess.Popen, log: Path, how: str) -> None:
    """Wait until the SuperLink (its output in ``log``) has activated each of ``node_ids``."""
    for node_id in node_ids:
        wait_logged(
            log, f"Activated node_id={node_id}", proc=link, what=f"SuperNode {node_id} {how}"
        )


def start_flwr_run(
    app: Path, federation: str, run_config: str, *, env: dict[str, str], log: Path
) -> subprocess.Popen:
    """``flwr run`` of the Flower App ``app`` on ``federation`` with ``run_config``,
    streaming its output into ``log``."""
    command = [str(BIN / "flwr"), "run", str(app), federation, "--stream"]
    command += ["--run-config", run_config]
    with log.open("ab") as sink:
        return subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
