"""What an app records on a device: events, their kinds, and their validation.

Kinds (``EVENT_KINDS``) are positive engagement (``view``, ``click``, ``play``,
``complete``, ``rating``, ``purchase``, ``add_to_list``) or negative feedback (``skip``,
``dismiss``, ``not_interested``); hyphenated spellings (``add-to-list``) are accepted.
An item counts as one of the person's items when its most recent event is positive; an
item whose most recent event is negative is *rejected*: it is never recommended, does
not count, and counts against its genre in the content profile. A ``rating`` is positive
at or above the device's rating threshold (``RATING_THRESHOLD``, 3, for 1–5 stars; an
app with another scale passes its own to ``Device.open``) and negative feedback below it,
so a 1★ never becomes a "Because you rated" reason.

Validation happens before anything is stored and names the field: an empty or oversized
item id, an unknown kind, a non-finite or out-of-range value, a timestamp before 1970 or
more than a day ahead, a context that is not a small mapping of scalars. Numbers may be
Python's or numpy's (``np.float32(4.5)``); they are stored as Python floats and ints.
"""

from __future__ import annotations

import json
import math
import numbers
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from stamen.errors import EventError

__all__ = [
    "CONTEXT_LIMITS",
    "EVENT_KINDS",
    "Event",
    "EventKind",
    "RATING_THRESHOLD",
    "is_positive",
    "validate_context",
    "validate_event",
]


@dataclass(frozen=True)
class EventKind:
    """A kind of event: whether it is engagement, the verb a reason uses, and the range
    its value must lie in."""

    positive: bool
    verb: str
    low: float = 0.0
    high: float = math.inf


#: Every kind an app may record (see module docstring).
EVENT_KINDS: dict[str, EventKind] = {
    "view": EventKind(True, "viewed"),
    "click": EventKind(True, "clicked"),
    "play": EventKind(True, "played"),
    "complete": EventKind(True, "finished", high=1.0),
    "rating": EventKind(True, "rated", low=-math.inf),
    "purchase": EventKind(True, "bought"),
    "add_to_list": EventKind(True, "saved"),
    "skip": EventKind(False, "skipped"),
    "dismiss": EventKind(False, "dismissed"),
    "not_interested": EventKind(False, "marked not interested"),
}

#: A rating at or above this counts as a like, below it as negative feedback (1–5 stars).
RATING_THRESHOLD = 3.0


def is_positive(kind: str, value: float, rating_threshold: float | None) -> bool:
    """Whether an event of ``kind`` with ``value`` is engagement (else negative feedback):
    the kind's own side, but for a rating below ``rating_threshold`` (``None``: every
    rating is engagement)."""
    if kind == "rating" and rating_threshold is not None:
        return value >= rating_threshold
    return EVENT_KINDS[kind].positive


#: Bounds of an event's id and context.
CONTEXT_LIMITS = {"item_chars": 256, "keys": 16, "key_chars": 64, "json_bytes": 1024}

_CONTEXT_RANGES = {"hour": (0, 23), "weekday": (0, 6)}
_FUTURE_SLACK = 86400.0


@dataclass(frozen=True)
class Event:
    """One validated event: the app's item id, the canonical kind, the value, the time
    in seconds since the epoch, the context (a small mapping of scalars) and the app's
    own event id, when it gave one (a retried event with the same id is stored once)."""

    item: str
    kind: str
    value: float = 1.0
    at: float = 0.0
    context: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the form ``export`` writes and ``record_many`` accepts);
        ``id`` only when the app gave one."""
        fields = {
            "item": self.item,
            "kind": self.kind,
            "value": self.value,
            "at": self.at,
            "context": dict(self.context),
        }
        return fields if self.id is None else {**fields, "id": self.id}


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a real number (Python's or numpy's), else ``None``
    (``bool`` is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def _scalar(value: Any) -> Any:
    """A context value as a plain Python scalar (a numpy scalar unwrapped)."""
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def _timestamp(at: Any, now: float) -> float:
    if isinstance(at, datetime):
        if at.tzinfo is None:
            raise ValueError("a datetime needs a time zone (use datetime.now(timezone.utc))")
        at = at.timestamp()
    if _number(at) is None:
        raise ValueError(f"expected seconds since the epoch or a datetime, got {at!r}")
    at = float(at)
    if not math.isfinite(at):
        raise ValueError(f"{at!r} is not finite")
    if at < 0:
        raise ValueError(f"{at!r} is before 1970")
    if at > now + _FUTURE_SLACK:
        raise ValueError(f"{at!r} is more than a day ahead of the device's clock ({now:.0f})")
    return at


def validate_context(context: Any) -> dict[str, Any]:
    """Check a context (``record``'s and ``recommend``'s alike) and return it as a dict
    of plain Python scalars (numpy scalars unwrapped).

    Raises:
        EventError: naming the field ``context``.
    """
    try:
        return _context(context)
    except ValueError as error:
        raise EventError(str(error), field="context") from None


def _context(context: Any) -> dict[str, Any]:
    if context is None:
        return {}
    if not isinstance(context, Mapping):
        raise ValueError(f"expected a mapping, got {type(context).__name__}")
    limits = CONTEXT_LIMITS
    if len(context) > limits["keys"]:
        raise ValueError(f"{len(context)} keys; at most {limits['keys']}")
    context = {key: _scalar(value) for key, value in context.items()}
    for key, value in context.items():
        if not isinstance(key, str) or not 0 < len(key) <= limits["key_chars"]:
            raise ValueError(f"key {key!r} is not a string of 1 to {limits['key_chars']} chars")
        if value is not None and not isinstance(value, str | int | float | bool):
            raise ValueError(f"{key!r} holds a {type(value).__name__}; only scalars are kept")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{key!r} is not finite")
        if key in _CONTEXT_RANGES:
            low, high = _CONTEXT_RANGES[key]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{key!r} must be an integer in [{low}, {high}], got {value!r}")
    size = len(json.dumps(dict(context)).encode("utf-8"))
    if size > limits["json_bytes"]:
        raise ValueError(f"{size} bytes as JSON; at most {limits['json_bytes']}")
    return dict(context)


def validate_event(
    item: Any,
    kind: Any,
    *,
    value: Any = 1.0,
    at: Any = None,
    context: Any = None,
    index: int | None = None,
    now: float | None = None,
    event_id: Any = None,
) -> Event:
    """Check one event and return it in canonical form (``at`` defaults to now).

    Raises:
        EventError: naming the field (and ``index``, for an event of a batch).
    """
    now = time.time() if now is None else now
    if not isinstance(item, str) or not item.strip():
        raise EventError(
            f"the item id must be a non-empty string, got {item!r}", field="item", index=index
        )
    if len(item) > CONTEXT_LIMITS["item_chars"] or "\x00" in item:
        raise EventError(
            f"the item id must be at most {CONTEXT_LIMITS['item_chars']} characters, no NUL",
            field="item",
            index=index,
        )
    name = kind.replace("-", "_") if isinstance(kind, str) else kind
    if name not in EVENT_KINDS:
        raise EventError(
            f"unknown kind {kind!r}; known: {', '.join(EVENT_KINDS)}", field="kind", index=index
        )
    spec = EVENT_KINDS[name]
    number = _number(value)
    if number is None:
        raise EventError(f"expected a number, got {value!r}", field="value", index=index)
    value = number
    if not math.isfinite(value):
        raise EventError(f"{value!r} is not finite", field="value", index=index)
    if not spec.low <= value <= spec.high:
        raise EventError(
            f"{value!r} is outside [{spec.low:g}, {spec.high:g}] for a {name!r} event",
            field="value",
            index=index,
        )
    try:
        stamp = now if at is None else _timestamp(at, now)
    except ValueError as error:
        raise EventError(str(error), field="at", index=index) from None
    try:
        ctx = _context(context)
    except ValueError as error:
        raise EventError(str(error), field="context", index=index) from None
    if event_id is not None and (
        not isinstance(event_id, str)
        or not event_id.strip()
        or len(event_id) > CONTEXT_LIMITS["item_chars"]
    ):
        raise EventError(
            f"an event id must be a non-empty string of at most {CONTEXT_LIMITS['item_chars']} "
            f"characters, got {event_id!r}",
            field="id",
            index=index,
        )
    return Event(
        item=str(item),
        kind=name,
        value=value,
        at=stamp,
        context=ctx,
        id=None if event_id is None else str(event_id),
    )
