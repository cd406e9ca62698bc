"""The state every part of a :class:`~stamen.client.device.device.Device` shares: the
open store, the person's events folded into their latest event per item, and what the
installed release derives from them (items, rejected items, user vector). The parts
(releases, serving, impressions, portability) are mixins over this core.

Thread safety: every public method takes one lock, so a UI thread may record while a
background thread recommends or trains; calls are serialised, never interleaved.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import ChainMap
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any, Self

import numpy as np

from stamen.client.device.events import (
    RATING_THRESHOLD,
    Event,
    is_positive,
    validate_event,
)
from stamen.client.device.fair_lock import FairLock
from stamen.client.device.folder import FolderLock
from stamen.client.device.served import ReleaseInfo, ServedRelease, arm_settings
from stamen.client.device.store import EventStore
from stamen.client.pipeline.recommend import PipelineSettings
from stamen.errors import (
    DeviceClosedError,
    EventError,
    StamenError,
)
from stamen.models.bundle import ReleaseCatalog
from stamen.models.two_tower.context import context_row

__all__ = ["DeviceCore"]

_log = logging.getLogger("stamen.device")

_EXPERIMENT_SECRET = "experiment_secret"


class DeviceCore:
    """The shared state of a device and its events (see module docstring)."""

    def __init__(
        self,
        folder: Path,
        store: EventStore,
        release_key: bytes,
        pipeline: PipelineSettings | None = None,
        seed: int | None = None,
        rating_threshold: float | None = RATING_THRESHOLD,
    ) -> None:
        self.folder = folder
        self.pipeline = pipeline or PipelineSettings()
        self._rng = np.random.default_rng(seed)  # exploration; None: the OS's entropy
        self._store: EventStore | None = store
        self._release_key = release_key
        self._lock = FairLock()  # first come, first served: an apply is not starved
        self._folder_lock: FolderLock | None = None  # set by ``Device.open``
        self.rating_threshold = rating_threshold
        # the latest event per item: its time, kind and whether it is engagement
        self._latest: dict[str, tuple[float, str, bool]] = {}
        self._contexts: dict[str, np.ndarray] = {}  # the latest event's context per item
        self._serving: ServedRelease | None = None
        # the served release, the app's settings and the arms' settings made from them
        self._arm_pipeline: tuple[ServedRelease, PipelineSettings, PipelineSettings] | None = None
        self._release_error: StamenError | None = None  # why the installed one is not served
        self._factor: np.ndarray | None = None
        self._items = np.zeros(0, np.int64)
        self._ordered = np.zeros(0, np.int64)
        self._rejected = np.zeros(0, np.int64)
        self._track(store.events())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the store and let go of the folder (further calls raise
        ``DeviceClosedError``; another ``Device.open`` may now hold it)."""
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None
            if self._folder_lock is not None:
                self._folder_lock.release()
                self._folder_lock = None

    def _open_store(self) -> EventStore:
        if self._store is None:
            raise DeviceClosedError(f"{self.folder}: the device is closed")
        return self._store

    def _experiment_secret(self) -> bytes:
        """The device's experiment-assignment secret: 32 random bytes made on first use,
        kept in the encrypted store, never sent or exported
        (``stamen.client.device.experiment_arms``)."""
        store = self._open_store()
        secret = store.get_meta(_EXPERIMENT_SECRET)
        if secret is None:
            secret = secrets.token_bytes(32)
            store.set_meta({_EXPERIMENT_SECRET: secret})
        return secret

    def _served_pipeline(self) -> PipelineSettings:
        """The pipeline settings served now: the app's, with the overrides of the arm this
        device is in of each of the installed release's experiments (worked out once per
        installed release and app settings, not on every request)."""
        serving = self._serving
        if serving is None or not serving.experiments:
            return self.pipeline
        cached = self._arm_pipeline
        if cached is not None and cached[0] is serving and cached[1] is self.pipeline:
            return cached[2]
        settings = arm_settings(
            self.pipeline, serving.experiments, device_secret=self._experiment_secret()
        )
        self._arm_pipeline = (serving, self.pipeline, settings)
        return settings

    # -- events --------------------------------------------------------------------------

    def record(
        self,
        item: str,
        kind: str,
        *,
        value: float = 1.0,
        at: float | None = None,
        context: Mapping[str, Any] | None = None,
        event_id: str | None = None,
    ) -> Event:
        """Store one event durably and update the person's state before returning.

        ``kind`` is one of ``EVENT_KINDS``; ``value`` carries a rating or a watch
        fraction; ``at`` (seconds since the epoch, or an aware ``datetime``) defaults to
        now; ``context`` is a small mapping (``hour``, ``weekday``, ``device``,
        ``region``, …). An item the installed release does not know is kept, and counts
        once a release knows it. ``event_id``, the app's own id of the event, makes the
        call idempotent: a retry with an id already stored stores nothing and returns
        the event stored first.

        Raises:
            EventError: a malformed event (the message names the field); nothing stored.
        """
        event = validate_event(item, kind, value=value, at=at, context=context, event_id=event_id)
        with self._lock:
            if not self._append([event]) and event.id is not None:
                earlier = self._open_store().event(event.id)
                assert earlier is not None
                return earlier
        return event

    def record_many(
        self,
        events: Iterable[Event | Mapping[str, Any]],
        *,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Store a batch of events (``Event`` objects or dicts with ``item``, ``kind`` and
        optionally ``value``, ``at``, ``context``, ``id``) in one transaction: all or
        none. ``events`` may be any iterable: a generator streams through in constant
        memory (``progress(n)`` is called with the count stored so far, after every
        chunk). Returns how many were stored: an event whose ``id`` is stored already (or
        came earlier in the batch) is a retry and is skipped.

        Raises:
            EventError: naming the first malformed event's index and field; nothing
                of the batch is stored.
        """
        return self._append(_validated(events), progress)

    def _append(
        self, events: Iterable[Event], progress: Callable[[int], None] | None = None
    ) -> int:
        """Store ``events`` (one transaction) and fold them into the person's state once
        they are committed: an error part-way leaves both as they were."""
        with self._lock:
            latest: ChainMap[str, tuple[float, str, bool]] = ChainMap({}, self._latest)
            contexts: dict[str, np.ndarray] = {}
            moved, stored = False, 0

            def fold(chunk: list[Event]) -> None:
                nonlocal moved, stored
                moved |= self._track(chunk, latest, contexts)
                stored += len(chunk)
                if progress is not None:
                    progress(stored)

            count = self._open_store().append(events, fold)
            self._latest.update(latest.maps[0])
            self._contexts.update(contexts)
            if moved:
                self._refresh()
            return count

    def _track(
        self,
        events: Iterable[Event],
        latest: MutableMapping[str, tuple[float, str, bool]] | None = None,
        contexts: MutableMapping[str, np.ndarray] | None = None,
    ) -> bool:
        """Fold events into the latest event per item (``latest`` and ``contexts``: where
        to, by default the device's own); whether the person's state moved: an item
        changed side, or a liked item moved later in the history's order (what a
        sequential model reads)."""
        latest = self._latest if latest is None else latest
        contexts = self._contexts if contexts is None else contexts
        changed = False
        for event in events:
            before = latest.get(event.item)
            if before is None or event.at >= before[0]:
                positive = is_positive(event.kind, event.value, self.rating_threshold)
                latest[event.item] = (event.at, event.kind, positive)
                contexts[event.item] = context_row(event.context)
                changed |= before is None or before[2] != positive
                changed |= positive and before is not None and event.at > before[0]
        return changed

    def _ids(self, positive: bool) -> list[str]:
        """The items whose latest event is positive (negative), oldest first."""
        chosen = [(at, item) for item, (at, _, side) in self._latest.items() if side == positive]
        return [item for _, item in sorted(chosen)]

    def _refresh(self) -> None:
        """Re-derive the person's state from the events and the installed release."""
        serving = self._serving
        if serving is None:
            self._factor = None
            self._items = self._rejected = self._ordered = np.zeros(0, np.int64)
            return
        catalog = serving.bundle.catalog
        ordered = catalog.index_of(self._ids(True))
        ordered = ordered[ordered >= 0]
        rejected = np.unique(catalog.index_of(self._ids(False)))
        self._items, self._rejected = np.unique(ordered), rejected[rejected >= 0]
        self._ordered = ordered
        self._factor = serving.factor(ordered, self._factor)

    def event_count(self) -> int:
        """How many events the store holds (without reading them)."""
        with self._lock:
            return self._open_store().count()

    def history(self) -> list[Event]:
        """Every stored event, in the order recorded."""
        with self._lock:
            return list(self._open_store().events())

    def item_indices(self) -> np.ndarray:
        """The person's items as rows of the installed release's catalogue (sorted; items
        the release does not know are left out). Empty without a release."""
        with self._lock:
            self._open_store()
            return self._items.copy()

    def history_indices(self) -> np.ndarray:
        """The person's items as catalogue rows in the order of their latest positive
        event, oldest first (what a sequence-aware user tower reads)."""
        with self._lock:
            self._open_store()
            return self._ordered.copy()

    def history_contexts(self) -> np.ndarray:
        """The context ``(hour, weekday)`` recorded with the latest event of each item of
        :meth:`history_indices`, ``(n, 2)``; unknown where the app recorded none
        (``stamen.models.two_tower.context``)."""
        with self._lock:
            self._open_store()
            serving = self._serving
            if serving is None or not len(self._ordered):
                return np.zeros((0, 2), np.int64)
            catalog = serving.bundle.catalog
            return np.stack([self._contexts[i] for i in catalog.item_ids_of(self._ordered)])

    def history_times(self) -> np.ndarray:
        """The time (seconds since the epoch) of the latest event of each item of
        :meth:`history_indices`."""
        with self._lock:
            self._open_store()
            if self._serving is None or not len(self._ordered):
                return np.zeros(0, np.float64)
            return self._times(self._ordered)

    @property
    def release_key(self) -> bytes:
        """The publisher's Ed25519 public key this device pinned (raw 32 bytes)."""
        return self._release_key

    @property
    def user_factor(self) -> np.ndarray | None:
        """The person's current user factor (``None``: no release or no known items)."""
        with self._lock:
            self._open_store()
            return None if self._factor is None else self._factor.copy()

    @property
    def release(self) -> ReleaseInfo | None:
        """The installed release, or ``None``."""
        with self._lock:
            self._open_store()
            if self._serving is None:
                return None
            bundle = self._serving.bundle
            return ReleaseInfo(
                number=bundle.release,
                model=bundle.model,
                items=len(bundle.catalog),
                quantized=bool(bundle.quantized),
                retrieval=self._serving.retrieval,
            )

    @property
    def catalog(self) -> ReleaseCatalog | None:
        """The installed release's catalogue, or ``None``."""
        with self._lock:
            self._open_store()
            return None if self._serving is None else self._serving.bundle.catalog

    def _times(self, rows: np.ndarray) -> np.ndarray:
        """The time of the latest event of each catalogue row's item."""
        assert self._serving is not None
        ids = self._serving.bundle.catalog.item_ids_of(rows)
        return np.array([self._latest[i][0] for i in ids], np.float64)


def _validated(events: Iterable[Event | Mapping[str, Any]]) -> Iterator[Event]:
    """Each event of a batch checked as it is read (``EventError`` names its index)."""
    now = time.time()
    for index, raw in enumerate(events):
        fields = raw.to_json() if isinstance(raw, Event) else raw
        if not isinstance(fields, Mapping):
            raise EventError(
                f"expected a mapping, got {type(raw).__name__}", field="event", index=index
            )
        unknown = set(fields) - {"item", "kind", "value", "at", "context", "id"}
        if unknown:
            raise EventError(
                f"unknown fields {sorted(unknown)}", field=sorted(unknown)[0], index=index
            )
        yield validate_event(
            fields.get("item"),
            fields.get("kind"),
            value=fields.get("value", 1.0),
            at=fields.get("at"),
            context=fields.get("context"),
            index=index,
            now=now,
            event_id=fields.get("id"),
        )
