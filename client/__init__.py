"""The device side: the embeddable ``Device`` (encrypted event store, signed releases,
recommendations), the local training step and Stamen's Flower ClientApp.

Imports ``stamen.models``, ``stamen.privacy`` and ``flwr``; never ``stamen.server``.
"""

from stamen.client.app import (
    USER_STATE_KEY,
    VALID_METRICS,
    DeviceData,
    HeldOut,
    MFClient,
    build_client_app,
    make_client_fn,
)
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
from stamen.client.local import LocalResult, build_local_model, local_update
from stamen.client.record_dp import record_dp_update
from stamen.client.virtual import VirtualDevices

__all__ = [
    "Device",
    "DeviceClosedError",
    "DeviceData",
    "DeviceKeys",
    "EVENT_KINDS",
    "Event",
    "EventError",
    "HeldOut",
    "LocalResult",
    "MFClient",
    "Recommendation",
    "ReleaseError",
    "ReleaseInfo",
    "RollbackError",
    "USER_STATE_KEY",
    "VALID_METRICS",
    "VirtualDevices",
    "build_client_app",
    "build_local_model",
    "local_update",
    "make_client_fn",
    "record_dp_update",
]
