"""Release 0 as ``stamen release init`` writes it (a synthetic catalogue of 100 items),
the deployment ServerApp's run config over it and the devices a loopback deployment's
SuperNodes serve, for the tests that start a deployment from a releases folder
(``stamen.server.deployment``) or on a loopback SuperLink."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from stamen.client.device.device import Device
from stamen.models.bundle import latest_release
from stamen.simulation.cli.commands import app


def release_init(tmp_path: Path, *, dim: int = 4) -> tuple[Path, Path]:
    """``stamen release init`` of a synthetic data set (100 users, 100 items) into
    ``tmp_path/releases``, an MF model of dimension ``dim``, signed with
    ``tmp_path/keys/release.key`` (made there; its public key beside it, ``release.pub``);
    the releases folder and the signing key."""
    releases, key = tmp_path / "releases", tmp_path / "keys" / "release.key"
    config = tmp_path / "stamen.toml"
    config.write_text(
        'dataset = "synthetic"\nsynthetic_users = 100\nsynthetic_items = 100\n'
        f"[local]\ndim = {dim}\n"
    )
    result = CliRunner().invoke(
        app,
        ["release", "init", str(releases), "--signing-key", str(key), "--config", str(config)],
        env={"COLUMNS": "400"},
    )
    assert result.exit_code == 0, (result.output, result.exception)
    return releases, key


def run_config(tmp_path: Path, releases: Path, key: Path, **extra: object) -> dict:
    """The run config of a two-round deployment from ``releases`` signed with ``key``,
    checkpoints in ``tmp_path/checkpoints``, 3 devices a round under SecAgg+ of 3 shares
    (threshold 2); ``extra``: further keys (kebab-case, as ``flwr run`` passes them)."""
    return {
        "releases": str(releases),
        "checkpoints": str(tmp_path / "checkpoints"),
        "signing-key": str(key),
        "num-server-rounds": 2,
        "clients-per-round": 3,
        "secagg-num-shares": 3,
        "secagg-reconstruction-threshold": 2,
        **extra,
    }


def seed_devices(
    tmp_path: Path,
    key: Path,
    count: int,
    *,
    then: Callable[[int, Device], None] | None = None,
) -> None:
    """Devices ``tmp_path/device-<d>`` for ``d`` below ``count`` (each store key beside it,
    ``device-<d>.key``: what the ClientApp opens it with), pinned to the public key of
    ``key``, with the newest release of ``tmp_path/releases`` and ten recent views of the
    100 items (inside a trending window that ends at the server's clock); ``then(d,
    device)`` runs on each while it is open."""
    public = key.with_suffix(".pub").read_bytes()
    rng = np.random.default_rng(0)
    for d in range(count):
        store_key = rng.bytes(32)
        (tmp_path / f"device-{d}.key").write_bytes(store_key)
        with Device.open(tmp_path / f"device-{d}", key=store_key, release_key=public) as dev:
            dev.apply_release(latest_release(tmp_path / "releases"))
            items = rng.choice(np.arange(100), size=10, replace=False)
            now = time.time()
            dev.record_many(
                {"item": str(i), "kind": "view", "at": now - 600.0 * k} for k, i in enumerate(items)
            )
            if then is not None:
                then(d, dev)
