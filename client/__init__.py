"""The device side: the embeddable ``Device`` (encrypted event store, signed releases,
recommendations) and Stamen's Flower ClientApp.

Imports ``stamen.models``, ``stamen.privacy`` and ``flwr``; never ``stamen.server``. The
Flower and Opacus parts load on first use: an app that embeds ``Device`` imports neither.
"""

from stamen import lazy_attributes
from stamen.client.device import (
    Device,
    DeviceClosedError,
    Recommendation,
    ReleaseError,
    ReleaseInfo,
    RollbackError,
)
from stamen.client.events import EVENT_KINDS, Event, EventError
from stamen.client.keys import DeviceKeys
from stamen.client.virtual import VirtualDevices

#: Names loaded on first use (``__getattr__``), by module.
_LAZY = {
    "stamen.client.app": (
        "USER_STATE_KEY",
        "VALID_METRICS",
        "DeviceData",
        "HeldOut",
        "MFClient",
        "build_client_app",
        "make_client_fn",
    ),
    "stamen.client.record_dp": ("record_dp_update",),
}
__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = [
    "Device",
    "DeviceClosedError",
    "DeviceData",
    "DeviceKeys",
    "EVENT_KINDS",
    "Event",
    "EventError",
    "HeldOut",
    "MFClient",
    "Recommendation",
    "ReleaseError",
    "ReleaseInfo",
    "RollbackError",
    "USER_STATE_KEY",
    "VALID_METRICS",
    "VirtualDevices",
    "build_client_app",
    "make_client_fn",
    "record_dp_update",
]
