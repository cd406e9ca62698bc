"""Round time and bytes per device over Flower's real transport, on 127.0.0.1.

    python benchmarks/deployment.py --nodes 3 10 30 --rounds 2

For each number of SuperNodes n, with and without SecAgg+: a SuperLink with TLS and
SuperNode authentication, n registered SuperNodes, each holding its own encrypted device
seeded with one MovieLens-100K person's ratings (users 1 … n, ``stamen device import``),
and the deployment Flower App (``deploy/``) submitted with ``flwr run`` for ``--rounds`` rounds
of federated MF (release 0 of ``stamen release init --dataset ml-100k``: 1,682 items,
dim 64), every device in every round, no DP. SecAgg+ uses 3 shares (threshold 2) for 3
nodes and Stamen's defaults (5 shares, threshold 3) otherwise; without it the devices are
started with ``secure-aggregation='optional'`` (they refuse plain rounds otherwise).

Every SuperNode reaches the SuperLink through its own byte-counting TCP relay, so the
bytes are what crossed the wire (TLS records, HTTP framing and protobuf included), per
device and per round, both ways (the bytes carried from a round's start to its record).
A round's time is the strategy's (from configuring the round to publishing its release,
``rounds.jsonl``). ``--superlink-state memory`` runs the SuperLink on Flower's in-memory
state instead of an SQLite file. Round 1 also asks each device for its
id; the table reports the last round. Writes benchmarks/results/deployment.{json,md}.

``--through direct proxy`` (the default) runs each setting twice, one after the other:
direct, then with the SuperNodes' relays pointed at nginx's device-facing listener, which
forwards the Fleet API to the SuperLink (the closed control plane of ``stamen deploy
proxy-config``, ``stamen.server.proxy``; the operator's ``flwr`` calls still reach the
SuperLink's own 127.0.0.1 port). A second table then sets, per setting, the mean round time
after the first round direct against through the proxy: the proxy's added seconds per round
and the ratio. Each run records the 1-minute load average at its start and end.

A round's replies are waited for at most the deployment's ``reply-timeout`` (120 s; SecAgg+
stages: ``secagg-timeout``, 120 s): a reply that never comes (Flower's SuperNode drops a
message whose Fleet request the SuperLink answered with an error, e.g. 'database is locked'
under load) counts its device out of the round, recorded per round, with the errors of
Flower's that each run logged (:func:`flower_errors`). A run in which no round ends for
``STALL_S`` is abandoned and recorded as stalled; one whose ServerApp recorded its failure
(``<checkpoints>/status.json``) is recorded as failed, with the reason, as soon as it does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from tempfile import TemporaryDirectory

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))  # helpers.loopback: what the integration tests use

from common import local_path  # noqa: E402
from helpers.loopback import (  # noqa: E402
    BIN,
    flower_home,
    free_port,
    listening,
    register_supernode,
    running,
    superexec_command,
    superlink_command,
    supernode_command,
    text,
)
from typer.testing import CliRunner  # noqa: E402

from stamen.errors import ConfigError  # noqa: E402
from stamen.server.certs import make_certificates  # noqa: E402
from stamen.server.proxy import find_nginx, write_proxy_config  # noqa: E402
from stamen.simulation.cli.commands import app  # noqa: E402

RUN_S = 1800.0
STALL_S = 420.0  # a configuration is abandoned when no round ends for this long


class Abandoned(RuntimeError):
    """The run failed, or no round ended within STALL_S: why, and what the machine and
    Flower's logs looked like then."""

    def __init__(self, message: str, evidence: dict) -> None:
        super().__init__(message)
        self.evidence = evidence


#: What Flower's SuperNode logs when a Fleet request of its failed with an error answer it
#: does not retry (httpx's "Server error '500 …'"; the connection then ends) or when it drops
#: a message after one (``flwr.supernode.start_client_internal``).
GAVE_UP = ("Server error '", "Failed to send message", "Failed to receive message")


def flower_errors(tmp: Path, n: int) -> dict[str, int]:
    """What went wrong in Flower during a run, from its logs in ``tmp``: the SuperLink's
    'database is locked' (a write of its SQLite state that waited out the busy timeout),
    the SuperNodes' log lines of a Fleet request given up or a message dropped (GAVE_UP),
    and (through the proxy) nginx's 5xx answers."""
    nodes = "".join(text(tmp / f"node-{d}.log") for d in range(n)).splitlines()
    access = tmp / "proxy" / "logs" / "access.log"  # '… "POST /v1/fleet/… HTTP/1.1" 200 …'
    lines = text(access).splitlines() if access.exists() else []
    statuses = [line.split('" ', 1)[1].split()[0] for line in lines if '" ' in line]
    return {
        "superlink_database_locked": text(tmp / "superlink.log").count("database is locked"),
        "supernode_gave_up": sum(any(phrase in line for phrase in GAVE_UP) for line in nodes),
        "nginx_5xx": sum(status.startswith("5") for status in statuses),
    }


def _failure(status: Path) -> str | None:
    """Why the run failed, once its ServerApp has recorded that it did (``RunStatus``)."""
    if not status.exists():
        return None
    try:
        recorded = json.loads(status.read_text())
    except json.JSONDecodeError:  # being replaced: read it at the next look
        return None
    if recorded.get("status") != "failed":
        return None
    return str(recorded["reason"]).splitlines()[0]  # a table cell


def _clientapps() -> int:
    found = subprocess.run(["pgrep", "-fc", "flwr-clientapp"], capture_output=True, text=True)
    return int(found.stdout.strip() or 0)


class Relays:
    """Byte-counting TCP relays to ``target`` on 127.0.0.1, one per SuperNode, served by
    one asyncio loop on a background thread."""

    def __init__(self, target: int, count: int) -> None:
        self.target = target
        self.count = count
        self.events: list[tuple[float, int, bool, int]] = []  # (time, relay, up?, bytes)
        self.ports = [free_port() for _ in range(count)]
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()
        self._ready.wait(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        for i, port in enumerate(self.ports):
            self._loop.run_until_complete(
                asyncio.start_server(lambda r, w, i=i: self._relay(i, r, w), "127.0.0.1", port)
            )
        self._ready.set()
        self._loop.run_forever()

    async def _relay(self, i: int, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pipe(reader, up_writer, i, up=True), self._pipe(up_reader, writer, i, up=False)
        )

    async def _pipe(self, reader, writer, i: int, *, up: bool) -> None:
        try:
            while data := await reader.read(65536):
                self.events.append((time.time(), i, up, len(data)))  # up: device -> SuperLink
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def between(self, start: float, end: float) -> tuple[list[int], list[int]]:
        """Bytes each relay carried up and down from ``start`` to ``end`` (``time.time()``)."""
        up, down = [0] * self.count, [0] * self.count
        for when, i, is_up, size in list(self.events):
            if start <= when <= end:
                (up if is_up else down)[i] += size
        return up, down


def _cli(*args: str) -> None:
    result = CliRunner().invoke(app, list(args))
    if result.exit_code != 0:
        raise RuntimeError(f"stamen {' '.join(args)}: {result.output} {result.exception!r}")


def _wait(check, what: str, wait_s: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + wait_s
    while not check():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what}: failed\n{text(log)[-3000:]}")
        time.sleep(0.2)


def run_one(
    n: int,
    secagg: bool,
    rounds: int,
    data: Path,
    tmp: Path,
    executor: str,
    state: str,
    through: str = "direct",
) -> dict:
    certs = make_certificates(tmp / "certs", supernodes=n)
    key = tmp / "keys" / "release.key"
    os.environ["STAMEN_DATA_DIR"] = str(data.parent)
    _cli(
        "release", "init", str(tmp / "releases"), "--signing-key", str(key), "--dataset", "ml-100k"
    )
    latest = (tmp / "releases" / "latest").read_text().strip()
    for d in range(n):
        folder = str(tmp / f"device-{d}")
        _cli("device", "init", folder, "--release-key", str(key.with_suffix(".pub")))
        _cli("device", "import", folder, str(data / "u.data"), "--user", str(d + 1))
        _cli("device", "apply", folder, str(tmp / "releases" / latest))
    port = free_port()
    env, log = flower_home(tmp / "home", "bench", port, certs.ca_certificate), tmp / "superlink.log"
    shares = {"secagg-num-shares": 3, "secagg-reconstruction-threshold": 2} if n < 5 else {}
    config = {
        "releases": f"'{tmp / 'releases'}'",
        "checkpoints": f"'{tmp / 'checkpoints'}'",
        "signing-key": f"'{key}'",
        "population": n,
        "num-server-rounds": rounds,
        "clients-per-round": n,
        "secure-aggregation": str(secagg).lower(),
        **(shares if secagg else {}),
    }
    with ExitStack() as stack:
        link = stack.enter_context(
            running(
                superlink_command(
                    certs, port, tmp, "--enable-supernode-auth", in_memory=state == "memory"
                ),
                env=env,
                log=log,
            )
        )
        _wait(lambda: "Starting Flower SuperLink" in text(log), "SuperLink start", 60, link, log)
        for d in range(n):
            register_supernode(certs.supernodes[d].public_key, "bench", env)
        target = port
        if through == "proxy":  # the SuperNodes' relays reach nginx, nginx the SuperLink
            target = free_port()
            proxy = write_proxy_config(
                tmp / "proxy",
                certs=certs.folder,
                superlink=f"127.0.0.1:{port}",
                device_address=f"127.0.0.1:{target}",
            )
            nginx_log = tmp / "nginx.log"
            front = stack.enter_context(
                running(proxy.command(find_nginx(), foreground=True), env=env, log=nginx_log)
            )
            _wait(lambda: listening(target), "nginx listening", 60, front, nginx_log)
        relays = Relays(target, n)
        for d in range(n):
            forking, runtime = executor != "flower", free_port()
            command = supernode_command(
                certs.supernodes[d].private_key,
                certs,
                relays.ports[d],
                runtime_port=runtime,
                forking=forking,
                fast_poll=executor == "fork+poll",
            )
            node = f"device='{tmp / f'device-{d}'}' device-id={d}"
            if not secagg:  # a device requires SecAgg+ unless told it is optional
                node += " secure-aggregation='optional'"
            command += ["--node-config", node]
            stack.enter_context(running(command, env=env, log=tmp / f"node-{d}.log"))
            if forking:
                log_file = tmp / f"superexec-{d}.log"
                stack.enter_context(running(superexec_command(runtime), env=env, log=log_file))
        _wait(lambda: text(log).count("Activated node_id=") >= n, "SuperNodes", 300, link, log)
        rounds_log = tmp / "checkpoints" / "rounds.jsonl"
        started = time.perf_counter()
        run_cmd = [str(BIN / "flwr"), "run", str(ROOT / "deploy"), "bench"]
        run_cmd += ["--run-config", " ".join(f"{k}={v}" for k, v in config.items())]
        submitted = subprocess.run(run_cmd, env=env, capture_output=True, text=True, timeout=120)
        if submitted.returncode != 0:
            raise RuntimeError(f"flwr run: {submitted.stdout}{submitted.stderr}")
        seen, last, peak = 0, time.perf_counter(), 0  # the run goes on in the SuperLink
        while seen < rounds and time.perf_counter() - started < RUN_S:
            lines = rounds_log.read_text().splitlines() if rounds_log.exists() else []
            if seen < len(lines):  # a round ended
                seen, last = len(lines), time.perf_counter()
            if link.poll() is not None:
                raise RuntimeError(f"the SuperLink exited\n{text(log)[-3000:]}")
            peak = max(peak, _clientapps())
            failed = _failure(tmp / "checkpoints" / "status.json")
            if failed is not None or time.perf_counter() - last > STALL_S:
                raise Abandoned(
                    f"failed after {seen} rounds: {failed}"
                    if failed is not None
                    else f"stalled: no round ended within {STALL_S:.0f} s (rounds done: {seen})",
                    {
                        "ended": "stalled" if failed is None else "failed",
                        "rounds_done": seen,
                        "peak_clientapp_processes": peak,
                        **flower_errors(tmp, n),
                        "task_token_rejections": sum(
                            text(tmp / f"node-{d}.log").count("task-token authentication failed")
                            for d in range(n)
                        ),
                    },
                )
            time.sleep(0.5)
        if seen < rounds:
            raise RuntimeError(f"not {rounds} rounds within {RUN_S} s\n{text(log)[-3000:]}")
        wall = time.perf_counter() - started
        errors = flower_errors(tmp, n)
    lines = rounds_log.read_text().splitlines() if rounds_log.exists() else []
    records = [json.loads(line) for line in lines]
    if len(records) != rounds:
        raise RuntimeError(f"rounds incomplete: {records}")
    per_round = []
    for r in records:  # a round's bytes: those carried between its start and its record
        up, down = relays.between(r["time"] - r["seconds"], r["time"])
        per_round.append(
            {
                "round": r["round"],
                "seconds": r["seconds"],
                "devices": r.get("devices", 0),
                "dropouts": r.get("dropouts", 0),
                "failed": r.get("failed"),  # why the round failed (the model stayed)
                "up_bytes_per_device": sum(up) / n,
                "down_bytes_per_device": sum(down) / n,
                "payload_up_bytes_per_device": r.get("upload_bytes_per_device"),
            }
        )
    return {
        "nodes": n,
        "secagg": secagg,
        "executor": executor,
        "through": through,
        "superlink_state": state,
        "rounds": per_round,
        "run_seconds": wall,
        **errors,
    }


def _setting(row: dict) -> str:
    return f"| {row['nodes']} | {'on' if row['secagg'] else 'off'} | {row['executor']} |"


def _load(row: dict) -> str:
    return "{:.1f} → {:.1f}".format(*row["load_average"])


def _errors(row: dict) -> str:
    return "{} / {} / {}".format(
        row["superlink_database_locked"], row["supernode_gave_up"], row["nginx_5xx"]
    )


def _lost(row: dict) -> int:
    """Devices counted out of a run's rounds (no reply in time) and rounds that failed."""
    return sum(r["dropouts"] + bool(r["failed"]) for r in row["rounds"])


def steady_seconds(row: dict) -> float:
    """A run's mean round time after its first round (round 1 also asks for device ids)."""
    later = [r["seconds"] for r in row["rounds"][1:]]
    return sum(later) / len(later)


def proxy_lines(rows: list[dict]) -> list[str]:
    """The table of each setting's round time direct against through the proxy: the
    proxy's added seconds per round and the ratio, and the load average from the start of
    the first run to the end of the second; a setting lacking either run is left out."""
    pairs: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        pairs.setdefault((row["nodes"], row["secagg"], row["executor"]), {})[row["through"]] = row
    lines = [
        "| SuperNodes | SecAgg+ | executor | round s direct | round s proxy | "
        "proxy adds s/round | proxy / direct | load avg (direct start → proxy end) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for runs in pairs.values():
        if "direct" not in runs or "proxy" not in runs:
            continue
        direct, proxy = runs["direct"], runs["proxy"]
        load = "{:.1f} → {:.1f}".format(direct["load_average"][0], proxy["load_average"][1])
        if "abandoned" in direct or "abandoned" in proxy:
            which = " and ".join(f"{k} {r['ended']}" for k, r in runs.items() if "abandoned" in r)
            lines.append(f"{_setting(direct)} {which} | | | | {load} |")
            continue
        if _lost(direct) or _lost(proxy):  # a round that waited out a timeout, or failed
            lost = ", ".join(f"{k} {_lost(r)}" for k, r in runs.items())
            lines.append(
                f"{_setting(direct)} devices counted out or rounds failed ({lost}) | | | | {load} |"
            )
            continue
        plain, through = steady_seconds(direct), steady_seconds(proxy)
        lines.append(
            f"{_setting(direct)} {plain:.1f} | {through:.1f} | {through - plain:+.1f} | "
            f"{through / plain:.2f} | {load} |"
        )
    return lines


def write(rows: list[dict], args: argparse.Namespace, out: Path, load_start: float) -> None:
    command = "python benchmarks/deployment.py " + " ".join(sys.argv[1:])
    out.mkdir(parents=True, exist_ok=True)
    name = f"deployment-{args.tag}" if args.tag else "deployment"
    polls = {
        key: os.environ.get(key)
        for key in ("STAMEN_SUPERNODE_POLL_S", "FLWR_SUPEREXEC_TASK_POLL_INTERVAL")
    }
    load_end = os.getloadavg()[0]
    (out / f"{name}.json").write_text(
        json.dumps(
            {
                "command": command,
                "polling": polls,
                "load_average": [load_start, load_end],
                "rows": rows,
            },
            indent=2,
        )
    )
    lines = [
        "# Deployment: round time and bytes per device over the real transport",
        "",
        f"Command: `{command}`",
        "",
        "127.0.0.1, one 2-core machine running the SuperLink, every SuperNode and every "
        "ClientApp process; TLS and SuperNode authentication on; federated MF on ML-100K "
        "(1,682 items, dim 64), every device in every round, no DP. SuperLink state: "
        + ("in memory" if args.superlink_state == "memory" else "an SQLite file")
        + ". Bytes are counted on the wire (TLS), per device, in the round shown (the last "
        "one), from its start to its record"
        + (
            ", between the SuperNode and nginx when through the proxy"
            if "proxy" in args.through
            else ""
        )
        + ". Polling (fork+poll): "
        f"SuperNode pulls every {os.environ.get('STAMEN_SUPERNODE_POLL_S', '0.2')} s, "
        "SuperExec task polls every "
        f"{os.environ.get('FLWR_SUPEREXEC_TASK_POLL_INTERVAL', '0.1')} s. The machine is "
        f"shared: load average (1 min) {load_start:.1f} at the start, {load_end:.1f} at the "
        "end. A round waits at most the deployment's reply timeout (120 s) for a reply: a "
        "device whose reply was lost is counted out (devices each round). Flower's errors: "
        "'database is locked' in the SuperLink's log (a write of its SQLite state that "
        "waited out SQLite's 5 s busy timeout), the SuperNodes' log lines of a Fleet request "
        "answered with an error they do not retry (their connection then ends) or of a "
        "message dropped after one, nginx's 5xx answers. A run whose ServerApp failed is "
        "shown with its reason.",
        "",
        "| SuperNodes | SecAgg+ | executor | through | round s (last) | round s (first) | "
        "every round s | devices each round | up bytes/device | down bytes/device | run s "
        "(submitted to last round) | 'database is locked' / SuperNode requests given up "
        "/ nginx 5xx | load avg (start → end) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "abandoned" in row:
            lines.append(
                f"{_setting(row)} {row['through']} | "
                f"{row['abandoned']}; peak {row['peak_clientapp_processes']} ClientApp "
                f"processes at once, {row['task_token_rejections']} task-token rejections "
                f"| | | | | | | {_errors(row)} | {_load(row)} |"
            )
            continue
        first, last = row["rounds"][0], row["rounds"][-1]
        every = ", ".join(f"{r['seconds']:.1f}" for r in row["rounds"])
        devices = ", ".join("failed" if r["failed"] else str(r["devices"]) for r in row["rounds"])
        lines.append(
            f"{_setting(row)} {row['through']} | "
            f"{last['seconds']:.1f} | {first['seconds']:.1f} | "
            f"{every} | {devices} | "
            f"{last['up_bytes_per_device']:,.0f} | "
            f"{last['down_bytes_per_device']:,.0f} | {row['run_seconds']:.0f} | "
            f"{_errors(row)} | {_load(row)} |"
        )
    if {"direct", "proxy"} <= set(args.through):
        lines += [
            "",
            "Through the proxy: each setting ran direct, then with every SuperNode reaching "
            "the SuperLink through nginx's device-facing listener (`stamen deploy "
            "proxy-config`: TLS terminated and opened again, the Fleet API only), one after "
            "the other so that the machine's load falls on both alike. Round s: the mean "
            "round time after the first round (round 1 also asks each device for its id).",
            "",
            *proxy_lines(rows),
        ]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[3, 10, 30])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument(
        "--executors",
        nargs="+",
        choices=["flower", "fork", "fork+poll"],
        default=["flower"],
        help="flower: each SuperNode's own SuperExec (a fresh process per message); "
        "fork: --isolation process with stamen-superexec (tasks forked, imports warm); "
        "fork+poll: that, with stamen-supernode (0.2 s waits instead of 3 s / 0.5 s)",
    )
    parser.add_argument(
        "--through",
        nargs="+",
        choices=["direct", "proxy"],
        default=["direct", "proxy"],
        help="direct: each SuperNode's relay reaches the SuperLink; proxy: nginx's "
        "device-facing listener in front of it (stamen deploy proxy-config); both: each "
        "setting direct, then through the proxy, and a table of the proxy's added latency",
    )
    parser.add_argument("--tag", default="", help="results file suffix (deployment-TAG)")
    parser.add_argument(
        "--poll-s",
        type=float,
        default=None,
        help="fork+poll: seconds between a SuperNode's pulls (STAMEN_SUPERNODE_POLL_S, "
        "default 0.2) and between its SuperExec's task polls (FLWR_SUPEREXEC_TASK_POLL_INTERVAL, "
        "default 0.1); fewer requests for a SuperLink serving many nodes on few cores",
    )
    parser.add_argument(
        "--superlink-state",
        choices=["file", "memory"],
        default="file",
        help="file: the SuperLink keeps its state in an SQLite file (survives a restart; "
        "the README's walk-through); memory: Flower's in-memory state (a restart loses the "
        "registered nodes and runs)",
    )
    args = parser.parse_args(argv)
    args.through = list(dict.fromkeys(args.through))  # each once, in the order given
    if {"direct", "proxy"} <= set(args.through) and args.rounds < 2:
        parser.error(
            f"--rounds {args.rounds}: comparing direct and proxy takes the rounds after the "
            "first (round 1 also asks each device for its id); give --rounds 2 or more"
        )
    if "proxy" in args.through:
        try:
            find_nginx()
        except ConfigError as error:
            parser.error(f"--through proxy: {error}")
    if args.poll_s is not None:
        os.environ["STAMEN_SUPERNODE_POLL_S"] = str(args.poll_s)
        os.environ["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(args.poll_s)
    path = local_path("ml-100k")
    load_start = os.getloadavg()[0]
    rows = []
    settings = [(n, e, s) for n in args.nodes for e in args.executors for s in (False, True)]
    for n, executor, secagg in settings:
        for through in args.through:
            what = f"{n} nodes, SecAgg+ {'on' if secagg else 'off'}, {executor}, {through}"
            started = os.getloadavg()[0]
            with TemporaryDirectory() as tmp:
                try:
                    row = run_one(
                        n,
                        secagg,
                        args.rounds,
                        path,
                        Path(tmp),
                        executor,
                        args.superlink_state,
                        through,
                    )
                except Abandoned as abandoned:
                    row = {
                        "nodes": n,
                        "secagg": secagg,
                        "executor": executor,
                        "through": through,
                        "abandoned": str(abandoned),
                        **abandoned.evidence,
                    }
            row["load_average"] = [started, os.getloadavg()[0]]
            rows.append(row)
            if "abandoned" in row:
                print(f"{what}: {row}", flush=True)
            else:
                last = row["rounds"][-1]
                print(
                    f"{what}: last round {last['seconds']:.1f} s, "
                    f"{last['up_bytes_per_device']:,.0f} B up / "
                    f"{last['down_bytes_per_device']:,.0f} B down per device",
                    flush=True,
                )
            write(rows, args, args.out, load_start)  # after every run: a crash keeps the rest
    write(rows, args, args.out, load_start)


if __name__ == "__main__":
    main(sys.argv[1:])
