"""Provisioning a simulation's virtual devices through the device library itself.

For every user of the split: a real :class:`~stamen.client.Device` (its own SQLCipher
store, under a per-device key derived from the run's master key), the run's first release
installed, and the user's training items recorded as events. The held-out items go to a
separate encrypted folder (``stamen.simulation.protocol.holdout``): they are the evaluation
protocol, not device data.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.progress import Progress

from stamen.client.flower.virtual import VirtualDevices
from stamen.models.bundle import ReleaseCatalog
from stamen.privacy import derive_key
from stamen.simulation.protocol.device_evaluation import HeldOut
from stamen.simulation.protocol.holdout import read_held_out, write_held_out
from stamen.simulation.protocol.split import Split

__all__ = ["Provisioned", "provision_devices"]


@dataclass(frozen=True)
class Provisioned:
    """A run's virtual devices and where their held-out items are."""

    devices: VirtualDevices
    held_out_folder: Path

    def held_out(self, row: int) -> HeldOut:
        """Device ``row``'s held-out items."""
        key = derive_key(self.devices.master_key, purpose="stamen-held-out")
        return read_held_out(self.held_out_folder, row, key=key)


def _events(split: Split, row: int, ids: list[str]) -> list[dict]:
    """Device ``row``'s training items as ``view`` events at their times (without
    timestamps: event ``k`` at time ``k``), each with its hour and weekday where the
    split knows them."""
    items = split.train.row(row).tolist()
    start = int(split.train.indptr[row])
    times = (
        np.arange(len(items), dtype=np.float64)
        if split.train_times is None
        else split.train_times[start : start + len(items)]
    )
    events = [
        {"item": ids[item], "kind": "view", "at": float(at)}
        for item, at in zip(items, times.tolist(), strict=True)
    ]
    if split.train.contexts is not None:
        for event, (hour, weekday) in zip(
            events, split.train.contexts[start : start + len(items)].tolist(), strict=True
        ):
            event["context"] = {"hour": hour, "weekday": weekday}
    return events


def provision_devices(
    split: Split,
    catalog: ReleaseCatalog,
    folder: Path,
    *,
    master_key: bytes,
    release_key: bytes,
    release: Path,
    progress: bool = False,
) -> Provisioned:
    """Create one device per user of ``split`` under ``folder / "devices"`` (anything
    there before is removed), each with ``release`` installed and its training items
    recorded as ``view`` events at their times (the ratings' values are not copied),
    and the held-out items under ``folder / "held-out"``."""
    devices = VirtualDevices(folder / "devices", master_key=master_key, release_key=release_key)
    shutil.rmtree(devices.folder, ignore_errors=True)
    ids = [catalog.item_id(i) for i in range(len(catalog))]
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("provisioning devices", total=split.n_users)
        for row in range(split.n_users):
            with devices.open(row) as device:
                device.apply_release(release, link=True)
                device.record_many(_events(split, row, ids))
            bar.advance(task)
    held_out = folder / "held-out"
    shutil.rmtree(held_out, ignore_errors=True)
    write_held_out(held_out, split, key=derive_key(master_key, purpose="stamen-held-out"))
    return Provisioned(devices=devices, held_out_folder=held_out)
