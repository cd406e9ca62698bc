"""The device side: the embeddable ``Device`` (encrypted event store, signed releases,
recommendations) and Stamen's Flower ClientApp.

Imports ``stamen.models``, ``stamen.privacy`` and ``flwr``; never ``stamen.server``. Everything
loads on first use: an app that embeds ``Device`` imports neither Flower nor Opacus. The
errors an app catches (all ``StamenError``, from :mod:`stamen.errors`) are exported here.
"""

from stamen import lazy_attributes
from stamen.errors import (
    BundleError,
    ConfigError,
    DataError,
    DecryptionError,
    DeviceBusyError,
    DeviceClosedError,
    EventError,
    ForeignReleaseError,
    NotAStoreError,
    PrivacyError,
    ReleaseError,
    RollbackError,
    SecureAggregationRequired,
    SignatureError,
    StamenError,
    StoreCorruptError,
    StoreError,
    StoreLostError,
)

#: Names loaded on first use (``__getattr__``), by module: importing the package (the
#: deployment ClientApp does, for every message) loads neither torch nor Opacus.
_LAZY = {
    "stamen.client.device.device": ("Device",),
    "stamen.client.device.serving": ("Recommendation",),
    "stamen.client.device.served": ("ReleaseInfo",),
    "stamen.client.device.events": ("EVENT_KINDS", "Event"),
    "stamen.client.device.event_files": ("EventFile",),
    "stamen.client.device.portability": ("Imported",),
    "stamen.client.device.keys": ("DeviceKeys",),
    "stamen.client.pipeline.recommend": ("PipelineSettings",),
    "stamen.client.pipeline.candidates": ("GENERATORS", "register_generator"),
    "stamen.client.flower.virtual": ("VirtualDevices",),
    "stamen.client.flower.app": (
        "USER_STATE_KEY",
        "DeviceClient",
        "DeviceData",
        "build_client_app",
        "make_client_fn",
    ),
    "stamen.client.flower.tasks": ("EVALUATE_TASKS", "FIT_TASKS"),
    "stamen.client.flower.record_dp": ("record_dp_update",),
}
__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = [
    "BundleError",
    "ConfigError",
    "DataError",
    "DecryptionError",
    "Device",
    "DeviceBusyError",
    "DeviceClient",
    "DeviceClosedError",
    "DeviceData",
    "DeviceKeys",
    "EVALUATE_TASKS",
    "EVENT_KINDS",
    "Event",
    "EventError",
    "EventFile",
    "FIT_TASKS",
    "ForeignReleaseError",
    "GENERATORS",
    "Imported",
    "NotAStoreError",
    "PipelineSettings",
    "PrivacyError",
    "Recommendation",
    "ReleaseError",
    "ReleaseInfo",
    "RollbackError",
    "SecureAggregationRequired",
    "SignatureError",
    "StamenError",
    "StoreCorruptError",
    "StoreError",
    "StoreLostError",
    "USER_STATE_KEY",
    "VirtualDevices",
    "build_client_app",
    "make_client_fn",
    "record_dp_update",
    "register_generator",
]
