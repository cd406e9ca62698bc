"""``flwr run .`` end to end: a SuperLink of our own (simulation runtime, 127.0.0.1 only,
stopped by the fixture) runs the Flower App named in pyproject.toml on 12 synthetic
devices for 2 rounds with SecAgg+ (the default) and distributed user-level DP at a
target ε of 8, then a round of the pipeline's ranker."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import warnings
from pathlib import Path

import pytest
from helpers.loopback import BIN, free_port
from helpers.paths import ROOT

from stamen.client import Device, DeviceKeys, VirtualDevices
from stamen.privacy import DecryptionError
from stamen.server import latest_release

pytestmark = pytest.mark.slow

USERS, COHORT, EPSILON = 12, 6, 8.0


def _wait_for(port: int, process: subprocess.Popen, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"flower-superlink did not listen on 127.0.0.1:{port} in {seconds} s")


def _attempt(env: dict, output: Path, log_path: Path, superlink: subprocess.Popen) -> str:
    """One ``flwr run`` of the app into ``output``; returns what the CLI printed. The
    run goes on in the SuperLink even if ``--stream`` ended early (seen under load), so
    this waits for the results file until the SuperLink reports the task finished."""
    run_config = (
        f"dataset='synthetic' synthetic-users={USERS} synthetic-items=400 "
        f"num-server-rounds=2 clients-per-round={COHORT} output='{output}' "
        f"dp='distributed' dp-epsilon={EPSILON} secagg-clipping-range=8.0 ranker-rounds=1"
    )
    finished_before = log_path.read_bytes().count(b"Finished task")
    done = subprocess.run(
        [
            str(BIN / "flwr"),
            "run",
            ".",
            "test",
            "--stream",
            "--federation-config",
            f"num-supernodes={USERS} client-resources-num-cpus=1",
            "--run-config",
            run_config,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    deadline = time.monotonic() + 300
    while not _complete(output / "results.json") and time.monotonic() < deadline:
        if superlink.poll() is not None:
            break
        if log_path.read_bytes().count(b"Finished task") > finished_before:
            time.sleep(2)  # the task ended: its last writes are on disk or never will be
            break
        time.sleep(0.5)
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def flwr_run(tmp_path_factory):  # noqa: ANN001, ANN201
    """Run the app once; yields the output folder and what the CLI and the SuperLink
    printed. A run that Flower ended before it wrote its results (on a loaded machine
    Flower's SuperLink has stopped the simulation task, whose heartbeats it missed) is
    tried once more, in a fresh folder, with a warning that carries the first try's logs."""
    home = tmp_path_factory.mktemp("flwr-home")
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # for flower-superexec
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    }
    port, fleet, control = free_port(), free_port(), free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    log_path = home / "superlink.log"
    log = log_path.open("wb")
    superlink = subprocess.Popen(
        [
            str(BIN / "flower-superlink"),
            "--insecure",
            "--simulation",
            "--host=127.0.0.1",
            f"--port={port}",
            f"--fleet-api-address=127.0.0.1:{fleet}",
            f"--control-api-address=127.0.0.1:{control}",
            f"--database={home / 'state.db'}",
            "--disable-runtime-dependency-installation",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # so the simulation process and Ray it starts go with it
    )
    try:
        _wait_for(port, superlink)
        output = tmp_path_factory.mktemp("flwr-output")
        printed = _attempt(env, output, log_path, superlink)
        if not _complete(output / "results.json") and superlink.poll() is None:
            first = f"{printed[-2000:]}\n--- SuperLink ---\n{_tail(log_path)}"
            warnings.warn(
                f"flwr run ended without results; trying once more:\n{first}", stacklevel=1
            )
            output = tmp_path_factory.mktemp("flwr-output")
            printed = _attempt(env, output, log_path, superlink)
        yield output, f"{printed[-3000:]}\n--- SuperLink ---\n{_tail(log_path)}"
    finally:
        superlink.terminate()
        try:
            superlink.wait(timeout=30)
        except subprocess.TimeoutExpired:
            superlink.kill()
            superlink.wait()
        with contextlib.suppress(ProcessLookupError):  # the simulation and Ray it started
            os.killpg(superlink.pid, signal.SIGKILL)
        log.close()


def _tail(path: Path, size: int = 4000) -> str:
    return path.read_bytes()[-size:].decode(errors="replace")


def _complete(path: Path) -> bool:
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def test_rounds_complete_under_secagg_and_dp_with_every_device(flwr_run) -> None:
    output, printed = flwr_run
    results_path = output / "results.json"
    assert results_path.is_file(), printed
    results = json.loads(results_path.read_text())
    rounds = results["federated"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    # Poisson cohorts (rate COHORT / USERS) under DP: every device sampled reported
    assert all(r["devices"] == r["cohort"] and r["failures"] == 0 for r in rounds), rounds
    assert all(r["upload_bytes_per_device"] > 0 for r in rounds)
    assert results["config"]["secagg"]["enabled"]
    privacy = results["privacy"]
    assert privacy["secure_aggregation"]["enabled"]
    assert privacy["encrypted_at_rest"] and privacy["signed_releases"]
    assert privacy["mode"] == "distributed" and privacy["rounds"] == 2
    assert 0 < privacy["epsilon"] <= EPSILON and privacy["delta"] == pytest.approx(1 / USERS)
    assert privacy["noise_multiplier"] > 0 and privacy["sampling_rate"] == COHORT / USERS
    assert all(0 < r["privacy"]["epsilon"] <= EPSILON for r in rounds)
    # then a round of the pipeline's ranker on the same devices, its ε its own
    (ranked,) = results["ranker"]["rounds"]
    assert ranked["devices"] == ranked["cohort"] > 0 and ranked["failures"] == 0, ranked
    assert ranked["release"] == "release-000003.stamen"
    assert 0 < results["ranker"]["privacy"]["epsilon"] <= EPSILON


def test_devices_are_encrypted_keys_owner_only_and_releases_signed(flwr_run) -> None:
    output, printed = flwr_run
    store, key_folder = output / "devices", output / "device-keys"
    assert len(list(store.glob("device-*"))) == USERS, printed
    for path in key_folder.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600
    keys = DeviceKeys.load(key_folder)
    devices = VirtualDevices(store, master_key=keys.store_key, release_key=keys.release_key)
    with devices.open(0) as device:
        assert device.item_indices().size > 0
    with pytest.raises(DecryptionError, match="device.db"):
        Device.open(devices.path(0), key=keys.store_key)
    # a signed release after every round, the newest behind `latest`, and a device takes it
    releases = output / "releases"
    assert latest_release(releases) == releases / "release-000003.stamen"  # the ranker's
    assert (releases / "release.pub").read_bytes() == keys.release_key
    with devices.open(1) as device:
        assert device.release.number == 2  # installed before the ranker's round
        assert device.apply_release(latest_release(releases)).number == 3
        assert len(device.recommend(5)) == 5
