"""``Device``: the library an app embeds (record events, apply releases, recommend).

A device lives in one folder of its own::

    device.db, device.db-wal, device.db-shm   the events, encrypted as a whole (SQLCipher)
    release.stamen                            the installed release, signed, as published

The store key comes from the app's keystore and is never written to the folder; the
publisher's Ed25519 public key is pinned in the (encrypted, authenticated) store when the
device is created. The release file holds only the published model and catalogue, never
anything about the person, and is verified again every time the device opens.

What the device knows about the person is derived from the events on every event: their
items (the most recent event positive), the items they rejected (the most recent event
negative feedback), and the user vector of the release's model (``RecModel.serving``):
for matrix factorisation the user factor, re-solved exactly against the installed item
factors for the ``ials`` objective (a few gradient steps for other losses); for the
two-tower model the user tower over the history, against the catalogue's item-tower
embeddings computed once per release. ``recommend`` ranks the catalogue with it; nothing
leaves the device.

Thread safety: every public method takes one lock, so a UI thread may record while a
background thread recommends or trains; calls are serialised, never interleaved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stamen.client.device.events import EVENT_KINDS, Event, validate_event
from stamen.client.device.impressions import Impression, engagement_rewards, ips_estimate
from stamen.client.device.store import DB_NAME, EventStore
from stamen.client.pipeline.candidates import ReleaseIndex, Request
from stamen.client.pipeline.recommend import PipelineSettings, offered_example, run_pipeline
from stamen.errors import (
    BundleError,
    DataError,
    DeviceClosedError,
    EventError,
    ReleaseError,
    RollbackError,
    SignatureError,
)
from stamen.models.bundle import ReleaseBundle, ReleaseCatalog
from stamen.models.registry import model_class
from stamen.models.two_tower.context import UNKNOWN_HOUR, UNKNOWN_WEEKDAY, context_row
from stamen.privacy import open_signed, write_atomically

__all__ = [
    "EXPORT_FORMAT",
    "RELEASE_FILE",
    "Device",
    "Recommendation",
    "ReleaseInfo",
]

_log = logging.getLogger("stamen.device")

RELEASE_FILE = "release.stamen"
EXPORT_FORMAT = "stamen-device-export/1"
_PINNED_KEY = "release_key"
_HIGHEST = "highest_release"
_DIGEST = "release_sha256"


@dataclass(frozen=True)
class Recommendation:
    """One recommended item: the app's id, its relevance, a reason a person can read, the
    stage that earned it (a candidate generator of ``stamen.client.pipeline.candidates``: ``"cf"``,
    ``"content"``, ``"trending"``, ``"fresh"``, ``"popular"``; or ``"explore"``) and the
    probability the pipeline's policy gave it in its position (1 without exploration);
    ``scores`` holds the score each candidate generator that proposed it gave it."""

    item: str
    score: float
    reason: str
    source: str
    propensity: float = 1.0
    scores: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ReleaseInfo:
    """What is installed: release number, model kind, catalogue size, int8 table or not."""

    number: int
    model: str
    items: int
    quantized: bool


class _Serving:
    """What a device derives from an installed release (held in memory only): the model
    named in the release (``stamen.models.registry``) and its serving state."""

    def __init__(self, bundle: ReleaseBundle, digest: bytes) -> None:
        self.bundle = bundle
        self.digest = digest
        cls = model_class(bundle.model)
        fields = cls.settings_class.model_fields
        settings = cls.settings_class.model_validate(
            {k: v for k, v in bundle.settings.items() if k in fields}
        )
        self.model = cls(settings, bundle.catalog)
        shared = bundle.shared_arrays()
        try:
            self.model.check_shared(shared)
        except ValueError as err:
            raise BundleError(f"release {bundle.release}: {err}") from None
        served = self.model.serving(shared, bundle.table)
        self.table, self.bias, self._user = served.table, served.bias, served.user
        self._context = served.context
        # what the candidate generators read, indexed once per release
        self.index = ReleaseIndex(bundle.catalog, bundle.popularity, bundle.trending)
        self.ranker = None if bundle.ranker is None else list(bundle.ranker)

    def request_vector(
        self, factor: np.ndarray, context: Mapping[str, Any] | None, at: float
    ) -> np.ndarray:
        """The user vector a request at time ``at`` scores with: ``factor`` plus the
        model's context term of the request (hour and weekday from ``context``, else the
        device's local clock), where the model reads context."""
        if self._context is None:
            return factor
        return factor + self._context(context_row(context, at=at))

    def factor(self, items: np.ndarray, previous: np.ndarray | None) -> np.ndarray | None:
        """The user vector for ``items`` (rows in time order), ``None`` without any."""
        if not len(items):
            return None
        return self._user(items, previous)


class Device:
    """One person's device (see module docstring). Create with :meth:`open`."""

    def __init__(
        self,
        folder: Path,
        store: EventStore,
        release_key: bytes,
        pipeline: PipelineSettings | None = None,
        seed: int | None = None,
    ) -> None:
        self.folder = folder
        self.pipeline = pipeline or PipelineSettings()
        self._rng = np.random.default_rng(seed)  # exploration; None: the OS's entropy
        self._store: EventStore | None = store
        self._release_key = release_key
        self._lock = threading.RLock()
        self._latest: dict[str, tuple[float, str]] = {}
        self._contexts: dict[str, np.ndarray] = {}  # the latest event's context per item
        self._serving: _Serving | None = None
        self._factor: np.ndarray | None = None
        self._items = np.zeros(0, np.int64)
        self._ordered = np.zeros(0, np.int64)
        self._rejected = np.zeros(0, np.int64)
        self._track(store.events())
        self._load_installed()

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        key: bytes,
        release_key: bytes | None = None,
        pipeline: PipelineSettings | None = None,
        seed: int | None = None,
    ) -> Device:
        """Open the device in folder ``path``, creating it (and the folder) if needed.

        Args:
            path: the device's own folder.
            key: the 32-byte store key, from the app's keystore (never written here).
            release_key: the publisher's raw 32-byte Ed25519 public key. Required to
                create a device, which pins it for life; later opens may omit it, and a
                different key is refused.
            pipeline: the recommendation pipeline's settings (default ``PipelineSettings()``).
            seed: seeds the pipeline's exploration (``None``: the operating system's
                entropy).

        Raises:
            DecryptionError: the store does not open under ``key``.
            ReleaseError: ``release_key`` differs from the pinned key, or is missing for
                a new device.
            ValueError: a key has the wrong length.
        """
        folder = Path(path)
        if release_key is not None and len(release_key) != 32:
            raise ValueError(f"release_key must be 32 bytes (got {len(release_key)})")
        new = not (folder / DB_NAME).exists()
        if new and release_key is None:
            raise ReleaseError(f"{folder}: a new device needs the publisher's release key to pin")
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        store = EventStore(folder, key=key)
        pinned = store.get_meta(_PINNED_KEY)
        if pinned is None:
            if release_key is None:
                store.close()
                raise ReleaseError(f"{folder}: no release key pinned; pass release_key")
            store.set_meta({_PINNED_KEY: bytes(release_key)})
            pinned = bytes(release_key)
        elif release_key is not None and bytes(release_key) != pinned:
            store.close()
            raise ReleaseError(
                f"{folder}: this device is pinned to another release key "
                f"({pinned.hex()[:16]}…); a device's release key never changes"
            )
        return cls(folder, store, pinned, pipeline, seed)

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the store (further calls raise ``DeviceClosedError``)."""
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def _open_store(self) -> EventStore:
        if self._store is None:
            raise DeviceClosedError(f"{self.folder}: the device is closed")
        return self._store

    def _load_installed(self) -> None:
        path = self.folder / RELEASE_FILE
        if not path.exists():
            return
        try:
            bundle, digest = self._verified(path.read_bytes(), str(path))
        except (SignatureError, DataError, ReleaseError) as error:
            _log.warning("%s: installed release ignored (%s); apply a release again", path, error)
            return
        highest = self._highest()
        if bundle.release < highest or (
            bundle.release == highest and digest != self._open_store().get_meta(_DIGEST)
        ):
            _log.warning(
                "%s: installed release %d is not the release %d this device last installed; "
                "ignored",
                path,
                bundle.release,
                highest,
            )
            return
        self._serving = _Serving(bundle, digest)
        self._refresh()

    # -- events --------------------------------------------------------------------------

    def record(
        self,
        item: str,
        kind: str,
        *,
        value: float = 1.0,
        at: float | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Event:
        """Store one event durably and update the person's state before returning.

        ``kind`` is one of ``EVENT_KINDS``; ``value`` carries a rating or a watch
        fraction; ``at`` (seconds since the epoch, or an aware ``datetime``) defaults to
        now; ``context`` is a small mapping (``hour``, ``weekday``, ``device``,
        ``region``, …). An item the installed release does not know is kept, and counts
        once a release knows it.

        Raises:
            EventError: a malformed event (the message names the field); nothing stored.
        """
        event = validate_event(item, kind, value=value, at=at, context=context)
        self._append([event])
        return event

    def record_many(self, events: Iterable[Event | Mapping[str, Any]]) -> int:
        """Store a batch of events (``Event`` objects or dicts with ``item``, ``kind`` and
        optionally ``value``, ``at``, ``context``) in one transaction: all or none.

        Raises:
            EventError: naming the first malformed event's index and field; nothing
                of the batch is stored.
        """
        now = time.time()
        checked = []
        for index, raw in enumerate(events):
            fields = raw.to_json() if isinstance(raw, Event) else raw
            if not isinstance(fields, Mapping):
                raise EventError(
                    f"expected a mapping, got {type(raw).__name__}", field="event", index=index
                )
            unknown = set(fields) - {"item", "kind", "value", "at", "context"}
            if unknown:
                raise EventError(
                    f"unknown fields {sorted(unknown)}", field=sorted(unknown)[0], index=index
                )
            checked.append(
                validate_event(
                    fields.get("item"),
                    fields.get("kind"),
                    value=fields.get("value", 1.0),
                    at=fields.get("at"),
                    context=fields.get("context"),
                    index=index,
                    now=now,
                )
            )
        self._append(checked)
        return len(checked)

    def _append(self, events: list[Event]) -> None:
        with self._lock:
            self._open_store().append(events)
            if self._track(events):
                self._refresh()

    def _track(self, events: Iterable[Event]) -> bool:
        """Fold events into the latest event per item; whether any item changed side."""
        changed = False
        for event in events:
            before = self._latest.get(event.item)
            if before is None or event.at >= before[0]:
                was = None if before is None else EVENT_KINDS[before[1]].positive
                self._latest[event.item] = (event.at, event.kind)
                self._contexts[event.item] = context_row(event.context)
                changed |= was != EVENT_KINDS[event.kind].positive
        return changed

    def _ids(self, positive: bool) -> list[str]:
        """The items whose latest event is positive (negative), oldest first."""
        chosen = [
            (at, item)
            for item, (at, kind) in self._latest.items()
            if EVENT_KINDS[kind].positive == positive
        ]
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
            return np.stack(
                [self._contexts[catalog.item_id(int(i))] for i in self._ordered.tolist()]
            )

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

    # -- releases ------------------------------------------------------------------------

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
            )

    @property
    def catalog(self) -> ReleaseCatalog | None:
        """The installed release's catalogue, or ``None``."""
        with self._lock:
            self._open_store()
            return None if self._serving is None else self._serving.bundle.catalog

    def _highest(self) -> int:
        raw = self._open_store().get_meta(_HIGHEST)
        return -1 if raw is None else int(raw.decode())

    def _verified(self, data: bytes, source: str) -> tuple[ReleaseBundle, bytes]:
        payload = open_signed(data, public_key=self._release_key, source=source)
        bundle = ReleaseBundle.decode(payload, source=source)
        try:
            model_class(bundle.model)
        except ValueError:
            raise ReleaseError(
                f"{source}: model {bundle.model!r} is not one this device serves"
            ) from None
        return bundle, hashlib.sha256(data).digest()

    def apply_release(
        self, bundle: bytes | str | os.PathLike[str], *, link: bool = False
    ) -> ReleaseInfo:
        """Verify and install a signed release (a file path or its bytes).

        The device keeps its own copy of the file. With ``link=True`` (a path only) it
        hard-links the file instead, where the file system allows: for files that are
        replaced, never rewritten in place, such as the server's ``release-NNNNNN.stamen``
        (simulations share one release among many devices this way). Re-applying the
        installed release changes nothing.

        Raises:
            SignatureError: unsigned, tampered, or signed by another key than the pinned.
            BundleError: signed but not a readable bundle.
            RollbackError: older than the newest release this device installed.
            ReleaseError: same number as the installed one with other contents, or a
                model this device does not serve.
            In every case the installed release stays.
        """
        path = None if isinstance(bundle, bytes | bytearray | memoryview) else Path(bundle)
        data = bytes(bundle) if path is None else path.read_bytes()  # type: ignore[arg-type]
        source = "release bundle" if path is None else str(path)
        with self._lock:
            store = self._open_store()
            release, digest = self._verified(data, source)
            highest = self._highest()
            if release.release < highest:
                raise RollbackError(
                    f"{source}: release {release.release} is older than release {highest}, "
                    "which this device installed; refused"
                )
            if release.release == highest and digest != store.get_meta(_DIGEST):
                raise ReleaseError(
                    f"{source}: release {highest} is installed with other contents; refused"
                )
            if self._serving is not None and self._serving.digest == digest:
                return self.release  # type: ignore[return-value]
            serving = _Serving(release, digest)  # before installing: it may refuse
            self._install_file(data, path if link else None)
            store.set_meta({_HIGHEST: str(release.release).encode(), _DIGEST: digest})
            self._serving = serving
            self._refresh()
            return self.release  # type: ignore[return-value]

    def _install_file(self, data: bytes, source: Path | None) -> None:
        """Put the release file in place atomically: a hard link to ``source`` where given
        and possible (the file is verified again at every open), else a written, fsynced
        copy."""
        target = self.folder / RELEASE_FILE
        if source is not None:
            link = self.folder / f".{RELEASE_FILE}.link"
            try:
                link.unlink(missing_ok=True)
                os.link(source, link)
                os.replace(link, target)
                return
            except OSError:
                link.unlink(missing_ok=True)
        write_atomically(target, data, mode=0o600)

    # -- recommending --------------------------------------------------------------------

    def recommend(
        self,
        k: int = 10,
        *,
        context: Mapping[str, Any] | None = None,
        exclude: Iterable[str] = (),
        at: float | None = None,
    ) -> list[Recommendation]:
        """The ``k`` best items for the person, best first, each with a reason.

        The on-device pipeline (``stamen.client.pipeline.recommend``, settings ``self.pipeline``):
        candidate generators (collaborative filtering against the user vector, content
        against the person's genre profile, the release's trending counts, the newest
        items, popularity for a person with no history), fused by rank, re-ranked under
        the rules (the person's own and rejected items; ``exclude``, the app's blocked
        item ids; availability in ``context["region"]``), diversified by MMR, capped per
        genre, explored ε-greedily. Never an exception for lack of data: with no release,
        an empty list. ``context`` (``hour``, ``weekday``, ``region``; a missing hour or
        weekday is read from the device's local clock) enters the score where the
        release's model reads context; it never leaves the device. ``at``: the request's
        time in seconds since the epoch (default: the device's clock; replays of old
        data pass the time they replay, so that item ages and launch windows mean then).
        """
        if k < 1:
            raise ValueError(f"k must be at least 1 (got {k})")
        with self._lock:
            self._open_store()
            serving = self._serving
            if serving is None:
                return []
            catalog = serving.bundle.catalog
            when = time.time() if at is None else float(at)
            request = self._request(serving, self._ordered, when, context, self._factor)
            blocked = catalog.index_of(list(exclude))
            region = (context or {}).get("region")
            picks = run_pipeline(
                request,
                self.pipeline,
                k,
                vectors=serving.table.rows,
                because=self._reasons,
                blocked=blocked[blocked >= 0],
                region=None if region is None else str(region),
                rng=self._rng,
                ranker=serving.ranker,
            )
            return [
                Recommendation(
                    catalog.item_id(p.row), p.score, p.reason, p.source, p.propensity, p.scores
                )
                for p in picks
            ]

    def _request(
        self,
        serving: _Serving,
        ordered: np.ndarray,
        at: float,
        context: Mapping[str, Any] | None,
        factor: np.ndarray | None,
    ) -> Request:
        """What the pipeline sees of a request at time ``at`` by a person whose items are
        ``ordered`` (catalogue rows in time order) and whose user vector is ``factor``."""
        cf_scores = None
        if factor is not None:
            vector = serving.request_vector(factor, context, at)
            cf_scores = serving.table.scores(vector[None])[0] + serving.bias
        return Request(
            index=serving.index,
            cf_scores=cf_scores,
            history=ordered,
            history_at=self._times(ordered),
            rejected=self._rejected,
            rejected_at=self._times(self._rejected),
            excluded=np.union1d(ordered, self._rejected),
            now=at,
            context=dict(context or {}),
            content_half_life_s=self.pipeline.content_half_life_days * 86400.0,
        )

    def ranking_example(self, recent: int = 1) -> tuple[np.ndarray, np.ndarray] | None:
        """This device's training example for the ranker, replayed from its own history:
        the list the pipeline (``self.pipeline``) would have given the ranker just before
        the person's last ``recent`` items, from the history before them and the
        installed release, with the items the person then took marked
        (``stamen.client.pipeline.recommend.offered_example``; the request's context is that of the
        first of those events). ``None`` without a release, with no more than
        ``recent`` items, or when the list holds none of them. Computed here; only the
        ranker's weight update, clipped and aggregated, ever leaves the device."""
        if recent < 1:
            raise ValueError(f"recent must be at least 1 (got {recent})")
        with self._lock:
            self._open_store()
            serving = self._serving
            if serving is None or len(self._ordered) <= recent:
                return None
            before, after = self._ordered[:-recent], self._ordered[-recent:]
            first = serving.bundle.catalog.item_id(int(after[0]))
            hour, weekday = self._contexts[first].tolist()
            context = {} if hour == UNKNOWN_HOUR else {"hour": hour}
            context |= {} if weekday == UNKNOWN_WEEKDAY else {"weekday": weekday}
            at = self._latest[first][0]
            request = self._request(serving, before, at, context, serving.factor(before, None))
            return offered_example(request, self.pipeline, after)

    def log_shown(
        self, recommendations: Sequence[Recommendation], *, at: float | None = None
    ) -> int:
        """Log a list the app showed, in the order shown, as one request: each slot's
        position, item, propensity and source, in the encrypted store (never sent).
        Returns the request's number."""
        when = time.time() if at is None else float(at)
        with self._lock:
            store = self._open_store()
            request = store.next_request()
            store.log_impressions(
                Impression(request, position, r.item, r.propensity, r.source, when)
                for position, r in enumerate(recommendations)
            )
            return request

    def impressions(self) -> list[Impression]:
        """Every logged impression, oldest first."""
        with self._lock:
            return self._open_store().impressions()

    def policy_value(
        self, target: Callable[[Impression], float], *, window_s: float = 86400.0
    ) -> tuple[float, float]:
        """How a target policy would have done on this device's logged impressions: the
        inverse-propensity estimate of its engagements per shown slot, and its standard
        error (``stamen.client.device.impressions``). ``target(impression)`` is the probability
        the target policy gives that item in that slot; rewards are the person's positive
        events within ``window_s`` after each impression. Computed here, never sent."""
        with self._lock:
            store = self._open_store()
            logged = store.impressions()
            rewards = engagement_rewards(logged, store.events(), window_s=window_s)
        return ips_estimate(
            rewards, np.array([i.propensity for i in logged]), np.array([target(i) for i in logged])
        )

    def _times(self, rows: np.ndarray) -> np.ndarray:
        """The time of the latest event of each catalogue row's item."""
        assert self._serving is not None
        catalog = self._serving.bundle.catalog
        return np.array([self._latest[catalog.item_id(int(r))][0] for r in rows], np.float64)

    def _reasons(self, ids: np.ndarray) -> list[str]:
        """ "Because you <verb> <title>": the person's item most similar to each pick."""
        serving = self._serving
        assert serving is not None
        history = serving.table.rows(self._items)
        picks = serving.table.rows(ids)
        history = history / np.maximum(np.linalg.norm(history, axis=1, keepdims=True), 1e-12)
        picks = picks / np.maximum(np.linalg.norm(picks, axis=1, keepdims=True), 1e-12)
        nearest = self._items[np.argmax(picks @ history.T, axis=1)]
        catalog = serving.bundle.catalog
        reasons = []
        for index in nearest:
            item = catalog.item_id(int(index))
            verb = EVENT_KINDS[self._latest[item][1]].verb
            reasons.append(f"Because you {verb} {catalog.title(int(index))}")
        return reasons

    # -- the person's rights -------------------------------------------------------------

    def export(self, path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """Everything stored about the person, as JSON (written to ``path`` if given):
        the events, the logged impressions, the derived state (items, rejected items,
        user factor) and what is installed. :meth:`restore` reads the events back."""
        with self._lock:
            release = self.release
            catalog = None if self._serving is None else self._serving.bundle.catalog
            ids = (lambda rows: [catalog.item_id(int(i)) for i in rows]) if catalog else None
            data = {
                "format": EXPORT_FORMAT,
                "exported_at": time.time(),
                "release_key": self._release_key.hex(),
                "release": None if release is None else release.__dict__,
                "events": [event.to_json() for event in self._open_store().events()],
                "impressions": [i.__dict__ for i in self._open_store().impressions()],
                "state": {
                    "items": ids(self._items) if ids else [],
                    "rejected": ids(self._rejected) if ids else [],
                    "user_factor": None if self._factor is None else self._factor.tolist(),
                },
            }
        if path is not None:
            Path(path).write_text(json.dumps(data, indent=1))
        return data

    def restore(self, export: Mapping[str, Any] | str | os.PathLike[str]) -> int:
        """Record the events of an :meth:`export` (a dict or the JSON file's path) into
        this device, which must hold no events yet. Returns the number restored.

        Raises:
            DataError: not an export of this format, or the device already holds events.
            EventError: an exported event is malformed (nothing is stored).
        """
        if not isinstance(export, Mapping):
            source = str(export)
            try:
                export = json.loads(Path(export).read_text())
            except (OSError, ValueError) as error:
                raise DataError(f"{source}: not a readable export ({error})") from None
        if not isinstance(export, Mapping) or export.get("format") != EXPORT_FORMAT:
            raise DataError(f"not a {EXPORT_FORMAT} export")
        with self._lock:
            if self._open_store().count():
                raise DataError(f"{self.folder}: restore needs a device without events")
            return self.record_many(export.get("events", []))

    def forget(self) -> None:
        """Erase everything this device stored: the database with its WAL and journal
        files, the installed release, the derived state. The folder is left empty and
        the device closed."""
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None
            for path in self.folder.iterdir():
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            self._latest.clear()
            self._contexts.clear()
            self._serving, self._factor = None, None
            self._items = self._rejected = np.zeros(0, np.int64)
