"""Many devices on one machine: the virtual devices of a simulation.

Each virtual device is a real :class:`~stamen.client.Device` in a folder of its own
(``device-000042``), its store encrypted under a key derived from the run's master key
(HKDF, one key per device), all pinned to the run's release key. The ClientApp opens the
device of its partition for each message it handles, exactly as an app would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stamen.client.device.device import Device
from stamen.client.pipeline.recommend import PipelineSettings
from stamen.privacy import derive_key

__all__ = ["VirtualDevices"]


@dataclass(frozen=True)
class VirtualDevices:
    """The virtual devices under ``folder`` (see module docstring)."""

    folder: Path
    master_key: bytes
    release_key: bytes

    def path(self, row: int) -> Path:
        """The folder of device ``row``."""
        return Path(self.folder) / f"device-{row:06d}"

    def key(self, row: int) -> bytes:
        """The store key of device ``row``."""
        return derive_key(self.master_key, purpose=f"stamen-virtual-device:{row}")

    def open(self, row: int, *, pipeline: PipelineSettings | None = None) -> Device:
        """Open (or create) device ``row`` (``pipeline``: its recommendation settings)."""
        return Device.open(
            self.path(row), key=self.key(row), release_key=self.release_key, pipeline=pipeline
        )
