"""The context of an event or a request: hour of day and weekday, as two small integers.

A context row is ``(hour, weekday)`` with hour in ``0..23`` and weekday in ``0..6``
(Monday is 0), or the "unknown" value in either column (:data:`UNKNOWN_HOUR`,
:data:`UNKNOWN_WEEKDAY`) where an event carries no time (HetRec Last.fm-2K) or a request
gives none. Contexts are on-device inputs of the user tower: they never leave a device.
Data-set timestamps are read in UTC; a device reads its own clock in local time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "UNKNOWN_CONTEXT",
    "UNKNOWN_HOUR",
    "UNKNOWN_WEEKDAY",
    "context_row",
    "timestamp_contexts",
]

UNKNOWN_HOUR = 24
UNKNOWN_WEEKDAY = 7
UNKNOWN_CONTEXT = (UNKNOWN_HOUR, UNKNOWN_WEEKDAY)

_DAY = 86_400
#: 1970-01-01 was a Thursday (weekday 3 with Monday 0).
_EPOCH_WEEKDAY = 3


def timestamp_contexts(timestamps: np.ndarray) -> np.ndarray:
    """``(n, 2)`` int64 contexts of Unix timestamps (seconds, UTC)."""
    seconds = np.asarray(timestamps, np.int64)
    days = np.floor_divide(seconds, _DAY)
    hour = np.floor_divide(seconds - days * _DAY, 3600)
    return np.stack([hour, (days + _EPOCH_WEEKDAY) % 7], axis=1).astype(np.int64)


def context_row(context: Mapping[str, Any] | None, *, at: float | None = None) -> np.ndarray:
    """The ``(2,)`` context of a request or event: ``hour`` and ``weekday`` from
    ``context`` where it has them, else from ``at`` (seconds since the epoch, read in the
    device's local time), else unknown."""
    context = context or {}
    local = None if at is None else time.localtime(at)
    hour = context.get("hour", None if local is None else local.tm_hour)
    weekday = context.get("weekday", None if local is None else local.tm_wday)
    return np.array(
        [
            UNKNOWN_HOUR if hour is None else int(hour),
            UNKNOWN_WEEKDAY if weekday is None else int(weekday),
        ],
        np.int64,
    )
