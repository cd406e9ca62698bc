"""The embeddable ``stamen.client.Device``: durable encrypted events, signed releases,
exact on-device recommendations, the person's rights (export, restore, forget)."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from stamen.client import (
    Device,
    DeviceClosedError,
    Event,
    EventError,
    ReleaseError,
    RollbackError,
)
from stamen.client.device.releases import RELEASE_FILE
from stamen.client.device.store import DB_NAME, SCHEMA_VERSION
from stamen.client.pipeline.recommend import PipelineSettings
from stamen.models import DataError
from stamen.models.bundle import ReleaseBundle, ReleaseCatalog
from stamen.privacy import (
    SIGNED_MAGIC,
    DecryptionError,
    SignatureError,
    generate_key,
    generate_signing_key,
    open_encrypted_database,
    seal_signed,
)

ALPHA, L2 = 1.0, 2.0
PUBLISHER = generate_signing_key()


def _bundle(
    release: int,
    n: int = 30,
    dim: int = 8,
    seed: int = 0,
    *,
    ids: list[str] | None = None,
    titles: list[str] | None = None,
    loss: str = "ials",
) -> ReleaseBundle:
    """A synthetic ``mf`` release: Gaussian item factors and biases, random popularity."""
    rng = np.random.default_rng(seed)
    ids = [f"item-{i}" for i in range(n)] if ids is None else ids
    titles = [f"Title {i}" for i in range(n)] if titles is None else titles
    return ReleaseBundle(
        release=release,
        model="mf",
        settings={"loss": loss, "dim": dim, "alpha": ALPHA, "l2": L2},
        arrays={
            "items.weight": rng.normal(0.0, 0.3, (n, dim)).astype(np.float32),
            "items.bias": rng.normal(0.0, 0.1, n).astype(np.float32),
        },
        catalog=ReleaseCatalog.build(ids, titles=titles),
        popularity=rng.random(n).astype(np.float32),
    )


def _signed(
    release: int,
    n: int = 30,
    dim: int = 8,
    seed: int = 0,
    *,
    private_key: bytes | None = None,
    quantize: tuple[str, ...] = (),
    **kwargs: object,
) -> tuple[ReleaseBundle, bytes]:
    """A synthetic release and its signed bytes (signed by ``PUBLISHER`` by default)."""
    bundle = _bundle(release, n, dim, seed, **kwargs)  # type: ignore[arg-type]
    key = PUBLISHER[0] if private_key is None else private_key
    return bundle, seal_signed(bundle.encode(quantize=quantize), private_key=key)


#: The release model's own order: these tests check the scorer, not the re-ranker.
RETRIEVAL = PipelineSettings.retrieval_only()


def _open(folder: Path, key: bytes, *, pin: bool = True) -> Device:
    return Device.open(
        folder, key=key, release_key=PUBLISHER[1] if pin else None, pipeline=RETRIEVAL
    )


def _ials_factor(bundle: ReleaseBundle, rows: list[int] | np.ndarray) -> np.ndarray:
    """The exact ``ials`` user factor, solved independently in float64:
    ``(QᵀQ + alpha Q_uᵀQ_u + l2 I) p = -Qᵀb + Σ_{i∈u}(1 + alpha - alpha b_i) q_i``."""
    q = bundle.arrays["items.weight"].astype(np.float64)
    b = bundle.arrays["items.bias"].astype(np.float64)
    qu = q[np.asarray(rows)]
    lhs = q.T @ q + ALPHA * qu.T @ qu + L2 * np.eye(q.shape[1])
    rhs = -q.T @ b + ((1.0 + ALPHA - ALPHA * b[np.asarray(rows)])[:, None] * qu).sum(0)
    return np.linalg.solve(lhs, rhs)


def _top(scores: np.ndarray, k: int, exclude: list[int] | np.ndarray) -> list[int]:
    scores = np.array(scores, np.float64)
    scores[np.asarray(exclude, np.int64)] = -np.inf
    order = np.argsort(-scores, kind="stable")
    return [int(i) for i in order[:k] if np.isfinite(scores[i])]


def _rows(bundle: ReleaseBundle, ids: list[str]) -> list[int]:
    return sorted(int(i) for i in bundle.catalog.index_of(ids))


# -- durability, encryption, forgetting --------------------------------------------------

_CHILD = """
import os, sys, time
from stamen.client import Device
device = Device.open(
    sys.argv[1],
    key=bytes.fromhex(os.environ["STAMEN_TEST_KEY"]),
    release_key=bytes.fromhex(os.environ["STAMEN_TEST_RELEASE_KEY"]),
)
device.record("zq-durable-7", "play", context={"hour": 21})
print("recorded", flush=True)
time.sleep(120)
"""


def test_an_acknowledged_record_survives_sigkill(tmp_path) -> None:
    key = generate_key()
    folder = tmp_path / "device"
    env = dict(os.environ, STAMEN_TEST_KEY=key.hex(), STAMEN_TEST_RELEASE_KEY=PUBLISHER[1].hex())
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        line = child.stdout.readline()  # type: ignore[union-attr]
        # killed the moment record() has returned: no close(), no checkpoint, no atexit
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        assert line == "recorded\n", child.stderr.read()  # type: ignore[union-attr]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    # the event was only in the write-ahead log (the kill skipped the checkpoint)
    wal = folder / f"{DB_NAME}-wal"
    assert wal.exists() and wal.stat().st_size > 0
    with _open(folder, key, pin=False) as device:
        history = device.history()
    assert [(e.item, e.kind, e.value, dict(e.context)) for e in history] == [
        ("zq-durable-7", "play", 1.0, {"hour": 21})
    ]


def test_forget_erases_only_stamens_files_in_a_folder_the_app_shares(tmp_path) -> None:
    key = generate_key()
    folder = tmp_path / "appdata"
    _, release = _signed(1)
    device = _open(folder, key)  # the folder is the device's; the app writes there anyway
    (folder / "settings.json").write_text("{}")
    (folder / "photos").mkdir()
    (folder / "photos" / "me.jpg").write_bytes(b"\xff\xd8")
    device.apply_release(release)
    device.record("item-1", "play")
    (folder / f".{RELEASE_FILE}.abc.tmp").write_bytes(b"half a release")
    device.forget()
    left = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
    assert left == ["photos", "photos/me.jpg", "settings.json"]
    assert (folder / "photos" / "me.jpg").read_bytes() == b"\xff\xd8"


def test_forget_leaves_an_empty_folder_and_a_closed_device(tmp_path) -> None:
    key = generate_key()
    folder = tmp_path / "device"
    _, release = _signed(1)
    device = _open(folder, key)
    device.apply_release(release)
    device.record("item-1", "play")
    device.record("item-2", "rating", value=4.5)
    assert (folder / DB_NAME).exists() and (folder / RELEASE_FILE).exists()
    assert device.recommend(3)
    device.forget()
    assert folder.is_dir()
    assert list(folder.iterdir()) == []
    # the derived state went with the data, and the device is closed
    assert device._factor is None and device._serving is None and not device._latest
    closed = "the device is closed"
    with pytest.raises(DeviceClosedError, match=closed):
        device.item_indices()
    with pytest.raises(DeviceClosedError, match=closed):
        device.history()
    with pytest.raises(DeviceClosedError, match=closed):
        device.record("item-3", "view")
    with pytest.raises(DeviceClosedError, match=closed):
        device.record_many([{"item": "item-3", "kind": "view"}])
    with pytest.raises(DeviceClosedError, match=closed):
        device.recommend()
    with pytest.raises(DeviceClosedError, match=closed):
        device.apply_release(release)
    with pytest.raises(DeviceClosedError, match=closed):
        device.export()
    with pytest.raises(DeviceClosedError, match=closed):
        device.restore({"format": "stamen-device-export/1", "events": []})
    assert list(folder.iterdir()) == []
    # the folder is a new device now: nothing of the old one is left
    with _open(folder, generate_key()) as fresh:
        assert fresh.history() == [] and fresh.release is None


def test_wrong_store_key_is_a_decryption_error_naming_the_file(tmp_path) -> None:
    folder = tmp_path / "device"
    with _open(folder, generate_key()) as device:
        device.record("item-1", "play")
    path = folder / DB_NAME
    with pytest.raises(DecryptionError, match=re.escape(str(path))):
        _open(folder, generate_key())
    with pytest.raises(DecryptionError, match="wrong key"):
        Device.open(folder, key=generate_key())


def test_database_files_hold_no_plaintext(tmp_path) -> None:
    key = generate_key()
    folder = tmp_path / "device"
    secret_id, secret_title = "zq-item-4242", "Heat (1995)"
    ids = [f"item-{i}" for i in range(29)] + [secret_id]
    titles = [f"Title {i}" for i in range(29)] + [secret_title]
    _, release = _signed(1, ids=ids, titles=titles)
    secrets = [s.encode("utf-8") for s in (secret_id, secret_title, "zq-phone-77")]

    def database_bytes() -> dict[str, bytes]:
        names = [DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"]
        return {n: (folder / n).read_bytes() for n in names if (folder / n).exists()}

    device = _open(folder, key)
    device.apply_release(release)
    for _ in range(20):
        device.record(secret_id, "play", context={"device": "zq-phone-77"})
    device.record("item-3", "rating", value=5.0)
    while_open = database_bytes()
    assert f"{DB_NAME}-wal" in while_open and len(while_open[f"{DB_NAME}-wal"]) > 0
    device.close()
    after_close = database_bytes()
    assert len(after_close[DB_NAME]) > 0
    for files in (while_open, after_close):
        for name, blob in files.items():
            for secret in secrets:
                assert secret not in blob, (name, secret)
    # the public release file does carry the catalogue: the search itself works
    assert secret_title.encode("utf-8") in (folder / RELEASE_FILE).read_bytes()
    with _open(folder, key, pin=False) as device:
        assert [e.item for e in device.history()].count(secret_id) == 20


def test_schema_version_is_set_and_a_newer_store_is_refused(tmp_path) -> None:
    key = generate_key()
    folder = tmp_path / "device"
    with _open(folder, key) as device:
        device.record("item-1", "play")
    db = open_encrypted_database(folder / DB_NAME, key=key)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    finally:
        db.close()
    with pytest.raises(DataError, match=rf"schema version {SCHEMA_VERSION + 1} is newer"):
        _open(folder, key, pin=False)


# -- events ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "kind", "options", "field", "message"),
    [
        ("", "play", {}, "item", "the item id must be a non-empty string, got ''"),
        ("   ", "play", {}, "item", "the item id must be a non-empty string"),
        (42, "play", {}, "item", "the item id must be a non-empty string, got 42"),
        ("item-1", "like", {}, "kind", "unknown kind 'like'; known: view, click"),
        ("item-1", "play", {"value": math.nan}, "value", "nan is not finite"),
        ("item-1", "play", {"value": math.inf}, "value", "inf is not finite"),
        ("item-1", "rating", {"value": -math.inf}, "value", "-inf is not finite"),
        (
            "item-1",
            "complete",
            {"value": 1.5},
            "value",
            r"1\.5 is outside \[0, 1\] for a 'complete' event",
        ),
        ("item-1", "play", {"value": -0.5}, "value", r"-0\.5 is outside \[0, inf\]"),
        ("item-1", "play", {"value": True}, "value", "expected a number, got True"),
        ("item-1", "play", {"value": "1"}, "value", "expected a number, got '1'"),
        ("item-1", "play", {"at": -1.0}, "at", r"-1\.0 is before 1970"),
        (
            "item-1",
            "play",
            {"at": time.time() + 2 * 86400},
            "at",
            r"\d+\.?\d* is more than a day ahead of the device's clock \(\d+\)",
        ),
        ("item-1", "play", {"at": datetime(2024, 1, 1)}, "at", "a datetime needs a time zone"),
        ("item-1", "play", {"at": "yesterday"}, "at", "expected seconds since the epoch"),
        (
            "item-1",
            "play",
            {"context": {f"k{i}": i for i in range(17)}},
            "context",
            "17 keys; at most 16",
        ),
        (
            "item-1",
            "play",
            {"context": {"note": "x" * 2000}},
            "context",
            r"\d+ bytes as JSON; at most 1024",
        ),
        (
            "item-1",
            "play",
            {"context": {"tags": ["a", "b"]}},
            "context",
            "'tags' holds a list; only scalars are kept",
        ),
        (
            "item-1",
            "play",
            {"context": {"hour": 24}},
            "context",
            r"'hour' must be an integer in \[0, 23\], got 24",
        ),
        ("item-1", "play", {"context": ["hour"]}, "context", "expected a mapping, got list"),
    ],
)
def test_malformed_events_are_refused_naming_the_field(
    tmp_path, item: object, kind: str, options: dict, field: str, message: str
) -> None:
    with _open(tmp_path / "device", generate_key()) as device:
        device.record("item-0", "view")
        with pytest.raises(EventError, match=rf"^field '{field}': {message}") as caught:
            device.record(item, kind, **options)  # type: ignore[arg-type]
        assert caught.value.field == field and caught.value.index is None
        assert isinstance(caught.value, DataError)
        assert [e.item for e in device.history()] == ["item-0"]


def test_valid_events_are_stored_in_canonical_form(tmp_path) -> None:
    at = datetime(2024, 5, 1, 12, tzinfo=UTC)
    with _open(tmp_path / "device", generate_key()) as device:
        event = device.record(
            "item-1", "add-to-list", value=3, at=at, context={"hour": 0, "region": "NL"}
        )
        assert event == Event(
            "item-1", "add_to_list", 3.0, at.timestamp(), {"hour": 0, "region": "NL"}
        )
        assert device.history() == [event]


def test_record_many_with_one_bad_event_stores_nothing(tmp_path) -> None:
    with _open(tmp_path / "device", generate_key()) as device:
        device.record("item-0", "view")
        before = device.history()
        batch = [
            {"item": "item-1", "kind": "play"},
            Event("item-2", "click", 1.0, time.time()),
            {"item": "item-3", "kind": "like"},
            {"item": "item-4", "kind": "play"},
        ]
        with pytest.raises(EventError, match=r"^event 2, field 'kind': unknown kind 'like'") as e:
            device.record_many(batch)
        assert e.value.index == 2 and e.value.field == "kind"
        with pytest.raises(EventError, match=r"^event 1, field 'rating': unknown fields"):
            device.record_many([{"item": "item-1", "kind": "play"}, {"item": "x", "rating": 5}])
        assert device.history() == before
        assert device.record_many(batch[:2]) == 2
        assert [e.item for e in device.history()] == ["item-0", "item-1", "item-2"]


def test_concurrent_records_and_recommends(tmp_path) -> None:
    n = 200
    _, release = _signed(1, n=2 * n + 20, dim=8, seed=3)
    errors: list[BaseException] = []
    done = threading.Event()
    served = []
    with _open(tmp_path / "device", generate_key()) as device:
        device.apply_release(release)

        def writer(thread: int) -> None:
            try:
                for i in range(n):
                    device.record(f"item-{thread * n + i}", "play")
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)

        def reader() -> None:
            try:
                while not done.is_set():
                    served.append(device.recommend(5))
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)

        writers = [threading.Thread(target=writer, args=(t,)) for t in range(2)]
        recommender = threading.Thread(target=reader)
        recommender.start()
        for thread in writers:
            thread.start()
        for thread in writers:
            thread.join(timeout=60)
        done.set()
        recommender.join(timeout=60)
        assert errors == []
        assert served and all(len(recs) == 5 for recs in served)
        history = [e.item for e in device.history()]
        assert len(history) == 2 * n
        assert sorted(history) == sorted(f"item-{i}" for i in range(2 * n))
        # each thread's events are stored in the order it recorded them
        for thread in range(2):
            numbers = [int(item.removeprefix("item-")) for item in history]
            mine = [i for i in numbers if thread * n <= i < (thread + 1) * n]
            assert mine == list(range(thread * n, (thread + 1) * n))
        assert len(device.item_indices()) == 2 * n


# -- releases ----------------------------------------------------------------------------


def test_refused_releases_leave_the_installed_one(tmp_path) -> None:
    key = generate_key()
    folder = tmp_path / "device"
    _, first = _signed(1, seed=1)
    _, second = _signed(2, seed=2)
    _, second_other = _signed(2, seed=20)
    other_publisher = generate_signing_key()
    _, foreign = _signed(3, seed=3, private_key=other_publisher[0])
    unsigned = _bundle(3, seed=3).encode()
    tampered = bytearray(_signed(3, seed=3)[1])
    tampered[len(SIGNED_MAGIC) + 200] ^= 0x01

    device = _open(folder, key)
    device.apply_release(first)
    device.record("item-4", "play")
    device.record("item-9", "complete", value=0.8)
    # a release as a file path works too
    path = tmp_path / "release-2.stamen"
    path.write_bytes(second)
    info = device.apply_release(path)
    assert (info.number, info.model, info.items, info.quantized) == (2, "mf", 30, False)
    expected = device.recommend(10)
    factor = device.user_factor
    installed = (folder / RELEASE_FILE).read_bytes()
    assert installed == second

    def unchanged() -> None:
        assert device.release == info
        assert device.recommend(10) == expected
        np.testing.assert_array_equal(device.user_factor, factor)
        assert (folder / RELEASE_FILE).read_bytes() == installed

    with pytest.raises(SignatureError, match="^release bundle: .*does not verify"):
        device.apply_release(bytes(tampered))
    unchanged()
    bad_path = tmp_path / "tampered.stamen"
    bad_path.write_bytes(bytes(tampered))
    with pytest.raises(SignatureError, match=f"^{re.escape(str(bad_path))}: .*does not verify"):
        device.apply_release(bad_path)
    unchanged()
    with pytest.raises(SignatureError, match="signed by a different key"):
        device.apply_release(foreign)
    unchanged()
    with pytest.raises(SignatureError, match=r"^release bundle: unsigned \(not a signed"):
        device.apply_release(unsigned)
    unchanged()
    with pytest.raises(
        RollbackError, match="release 1 is older than release 2, which this device installed"
    ):
        device.apply_release(first)
    unchanged()
    with pytest.raises(ReleaseError, match="release 2 is installed with other contents") as same:
        device.apply_release(second_other)
    assert type(same.value) is ReleaseError
    unchanged()
    # re-applying the identical release is a no-op
    assert device.apply_release(second) == info
    unchanged()
    device.close()
    # and what is installed survives a reopen (verified again)
    with _open(folder, key, pin=False) as device:
        unchanged()


def test_release_key_is_pinned_for_life(tmp_path) -> None:
    key = generate_key()
    folder = tmp_path / "device"
    with pytest.raises(ReleaseError, match="a new device needs the publisher's release key"):
        Device.open(folder, key=key)
    assert not folder.exists()
    with _open(folder, key):
        pass
    with pytest.raises(ReleaseError, match="pinned to another release key"):
        Device.open(folder, key=key, release_key=generate_signing_key()[1])
    with pytest.raises(ValueError, match="release_key must be 32 bytes"):
        Device.open(folder, key=key, release_key=b"short")
    with Device.open(folder, key=key, release_key=PUBLISHER[1]) as device:
        assert device.history() == []


def test_unknown_item_is_kept_and_counts_once_a_release_knows_it(tmp_path) -> None:
    key = generate_key()
    folder = tmp_path / "device"
    old, first = _signed(1, n=20, seed=1)
    ids = [f"item-{i}" for i in range(20)] + ["zq-new"]
    titles = [f"Title {i}" for i in range(20)] + ["Brand New"]
    new, second = _signed(2, n=21, seed=2, ids=ids, titles=titles)
    with _open(folder, key) as device:
        device.apply_release(first)
        device.record("item-3", "play")
        device.record("zq-new", "play")
        assert [e.item for e in device.history()] == ["item-3", "zq-new"]
        assert device.item_indices().tolist() == _rows(old, ["item-3"])
        device.apply_release(second)
        row = int(new.catalog.index_of(["zq-new"])[0])
        assert row == 20
        assert device.item_indices().tolist() == [3, row]
        recommended = [r.item for r in device.recommend(21)]
        assert "zq-new" not in recommended and "item-3" not in recommended
        assert len(recommended) == 19
        np.testing.assert_allclose(device.user_factor, _ials_factor(new, [3, row]), rtol=1e-4)
    with _open(folder, key, pin=False) as device:
        assert device.item_indices().tolist() == [3, row]


# -- the person's rights -----------------------------------------------------------------


def test_export_restores_into_a_fresh_device(tmp_path) -> None:
    _, release = _signed(1)
    a = _open(tmp_path / "a", generate_key())
    a.apply_release(release)
    a.record("item-1", "play", context={"hour": 9})
    a.record("item-2", "rating", value=3.5, at=1_700_000_000.25)
    a.record("item-5", "not_interested")
    a.record("item-7", "complete", value=0.5)
    exported = a.export(tmp_path / "export.json")
    assert exported["format"] == "stamen-device-export/1"
    assert json.loads((tmp_path / "export.json").read_text()) == exported
    assert exported["state"]["items"] == ["item-1", "item-2", "item-7"]
    assert exported["state"]["rejected"] == ["item-5"]
    for source in (tmp_path / "export.json", exported):
        folder = tmp_path / ("b-file" if isinstance(source, Path) else "b-dict")
        with _open(folder, generate_key()) as b:
            b.apply_release(release)
            assert b.restore(source) == 4
            again = b.export()
            assert again["events"] == exported["events"]
            assert again["state"]["items"] == exported["state"]["items"]
            assert again["state"]["rejected"] == exported["state"]["rejected"]
            np.testing.assert_allclose(
                again["state"]["user_factor"], exported["state"]["user_factor"], rtol=1e-6
            )
            assert b.history() == a.history()
            assert b.recommend(5) == a.recommend(5)
            with pytest.raises(DataError, match="restore needs a device without events"):
                b.restore(exported)
            assert len(b.history()) == 4
    with _open(tmp_path / "c", generate_key()) as c:
        with pytest.raises(DataError, match="not a stamen-device-export/1 export"):
            c.restore({"events": exported["events"]})
        with pytest.raises(DataError, match="not a readable export"):
            c.restore(tmp_path / "missing.json")
        assert c.history() == []
    a.close()


# -- recommending ------------------------------------------------------------------------


def test_no_release_recommends_nothing(tmp_path) -> None:
    with _open(tmp_path / "device", generate_key()) as device:
        device.record("item-1", "play")
        assert device.recommend() == []
        assert device.release is None and device.user_factor is None
        assert device.item_indices().tolist() == []
        with pytest.raises(ValueError, match="k must be at least 1"):
            device.recommend(0)


def test_popular_fallback_and_negative_feedback(tmp_path) -> None:
    bundle, release = _signed(1, n=30, seed=5)
    popularity = bundle.popularity
    with _open(tmp_path / "device", generate_key()) as device:
        device.apply_release(release)
        recs = device.recommend(5)
        assert [r.item for r in recs] == [f"item-{i}" for i in _top(popularity, 5, [])]
        assert {r.source for r in recs} == {"popular"}
        assert {r.reason for r in recs} == {"Popular right now"}
        np.testing.assert_allclose(
            [r.scores["popular"] for r in recs], np.sort(popularity)[::-1][:5]
        )
        # negative feedback alone: still no history, the rejected item is not offered
        most = recs[0].item
        device.record(most, "not_interested")
        assert device.item_indices().tolist() == [] and device.user_factor is None
        recs = device.recommend(30)
        assert most not in [r.item for r in recs] and len(recs) == 29
        assert {r.source for r in recs} == {"popular"}
        # with history: collaborative filtering, the rejected item still excluded
        device.record("item-2", "play")
        device.record("item-8", "purchase")
        recs = device.recommend(30)
        assert {r.source for r in recs} == {"cf"}
        assert {r.item for r in recs}.isdisjoint({most, "item-2", "item-8"})
        assert len(recs) == 27
        # negative feedback on one of the person's items removes it from their items
        device.record("item-8", "dismiss")
        assert device.item_indices().tolist() == [2]
        np.testing.assert_allclose(device.user_factor, _ials_factor(bundle, [2]), rtol=1e-4)
        assert "item-8" not in [r.item for r in device.recommend(30)]
        # a later positive event counts again
        device.record(most, "play")
        rows = _rows(bundle, ["item-2", most])
        assert device.item_indices().tolist() == rows
        np.testing.assert_allclose(device.user_factor, _ials_factor(bundle, rows), rtol=1e-4)
        assert most not in [r.item for r in device.recommend(30)]


def test_recommendation_reflects_the_event_just_recorded(tmp_path) -> None:
    bundle, release = _signed(1, n=60, dim=6, seed=11)
    q = bundle.arrays["items.weight"].astype(np.float64)
    b = bundle.arrays["items.bias"].astype(np.float64)
    k = 8

    def check(device: Device, history: list[str]) -> list[str]:
        rows = _rows(bundle, history)
        assert device.item_indices().tolist() == rows
        p = _ials_factor(bundle, rows)
        np.testing.assert_allclose(device.user_factor, p, rtol=1e-4, atol=1e-6)
        scores = q @ p + b
        expected = _top(scores, k, rows)
        recs = device.recommend(k)
        assert [r.item for r in recs] == [bundle.catalog.item_id(i) for i in expected]
        np.testing.assert_allclose([r.scores["cf"] for r in recs], scores[expected], rtol=1e-4)
        assert {r.source for r in recs} == {"cf"}
        return [r.item for r in recs]

    with _open(tmp_path / "device", generate_key()) as device:
        device.apply_release(release)
        history = ["item-3", "item-17", "item-40", "item-41", "item-59"]
        for item in history:
            device.record(item, "play")
        before_factor = device.user_factor
        before = check(device, history)
        device.record(before[0], "click")
        after = check(device, [*history, before[0]])
        assert before[0] not in after
        assert not np.allclose(device.user_factor, before_factor)
        # another event on an item already held changes nothing
        device.record("item-3", "complete", value=1.0)
        assert check(device, [*history, before[0]]) == after


def test_reason_names_the_most_similar_history_item(tmp_path) -> None:
    bundle, release = _signed(1, n=50, dim=8, seed=13)
    q = bundle.arrays["items.weight"].astype(np.float64)
    unit = q / np.linalg.norm(q, axis=1, keepdims=True)
    history = {
        "item-1": ("play", "played"),
        "item-12": ("rating", "rated"),
        "item-30": ("add_to_list", "saved"),
        "item-44": ("complete", "finished"),
    }
    with _open(tmp_path / "device", generate_key()) as device:
        device.apply_release(release)
        for item, (kind, _) in history.items():
            device.record(item, kind, value=0.9 if kind == "complete" else 4.0)
        rows = np.array(_rows(bundle, list(history)))
        recs = device.recommend(20)
        assert len(recs) == 20
        named = set()
        for rec in recs:
            pick = int(bundle.catalog.index_of([rec.item])[0])
            cosines = unit[rows] @ unit[pick]
            nearest = int(rows[np.argmax(cosines)])
            nearest_id = bundle.catalog.item_id(nearest)
            verb = history[nearest_id][1]
            assert rec.reason == f"Because you {verb} {bundle.catalog.title(nearest)}"
            named.add(nearest_id)
        assert len(named) >= 2  # the reasons actually vary with the pick


def _tensor_bytes(encoded: bytes, prefix: str) -> int:
    """Bytes of the safetensors tensors whose names start with ``prefix``."""
    (length,) = struct.unpack("<Q", encoded[:8])
    header = json.loads(encoded[8 : 8 + length])
    return sum(
        meta["data_offsets"][1] - meta["data_offsets"][0]
        for name, meta in header.items()
        if name != "__metadata__" and name.startswith(prefix)
    )


def test_int8_release_serves_close_to_float32(tmp_path) -> None:
    n, dim, k = 2000, 32, 10
    bundle = _bundle(1, n=n, dim=dim, seed=17)
    dense_bytes = bundle.encode()
    int8_bytes = bundle.encode(quantize=["items.weight"])
    decoded = ReleaseBundle.decode(int8_bytes)
    table = decoded.quantized["items.weight"]
    assert "items.weight" not in decoded.arrays and table.values.dtype == np.int8
    assert table.values.shape == (n, dim) and table.scale.shape == (n,)
    # per-row symmetric rounding: every entry is within half a step of the float value
    q = bundle.arrays["items.weight"]
    error = np.abs(table.dense_values() - q)
    assert (error <= table.scale[:, None] / 2 * (1 + 1e-5)).all()
    float_table = _tensor_bytes(dense_bytes, "model/items.weight")
    int8_table = _tensor_bytes(int8_bytes, "model/items.weight")
    assert float_table == n * dim * 4
    assert int8_table < 0.3 * float_table
    assert len(int8_bytes) < len(dense_bytes) - 0.7 * float_table

    key = generate_key()
    rng = np.random.default_rng(5)
    overlaps = []
    qf = q.astype(np.float64)
    b = bundle.arrays["items.bias"].astype(np.float64)
    # ||q_i - q̂_i||_2 <= sqrt(dim) * scale_i / 2 (each entry off by at most half a step)
    row_error = math.sqrt(dim) * table.scale.astype(np.float64) / 2
    for user in range(5):
        items = [f"item-{i}" for i in rng.choice(n, size=12, replace=False)]
        devices = []
        for name, data in (("f32", dense_bytes), ("int8", int8_bytes)):
            device = _open(tmp_path / f"{name}-{user}", key)
            info = device.apply_release(seal_signed(data, private_key=PUBLISHER[0]))
            assert info.quantized == (name == "int8")
            device.record_many([{"item": i, "kind": "play"} for i in items])
            devices.append(device)
        dense, small = devices
        picks_f = [r.item for r in dense.recommend(k)]
        picks_q = [r.item for r in small.recommend(k)]
        assert len(picks_q) == k and {r.source for r in small.recommend(k)} == {"cf"}
        overlaps.append(len(set(picks_f) & set(picks_q)))
        # A rigorous check: with s = Q p + b (float32 device) and ŝ = Q̂ p̂ + b (int8 device),
        # |s_i - ŝ_i| <= ||q_i|| ||p - p̂|| + ||q_i - q̂_i|| ||p̂|| <= delta for every item, so
        # every int8 pick has a float score within 2 delta of float32's k-th best score.
        p, p_hat = dense.user_factor.astype(np.float64), small.user_factor.astype(np.float64)
        delta = float(
            (
                np.linalg.norm(qf, axis=1) * np.linalg.norm(p - p_hat)
                + row_error * np.linalg.norm(p_hat)
            ).max()
        )
        scores = qf @ p + b
        kth = scores[[int(i) for i in bundle.catalog.index_of(picks_f)]].min()
        picked = scores[[int(i) for i in bundle.catalog.index_of(picks_q)]]
        assert (picked >= kth - 2 * delta - 1e-6).all()
        for device in devices:
            device.close()
    # Empirical: with Gaussian rows the int8 rounding error is uniform, std scale/sqrt(12)
    # per entry, about 0.6% of a score's spread, while neighbouring scores near the 10th of
    # 2000 lie about 3% of the spread apart; so most users lose at most one item.
    assert np.mean(overlaps) >= 8, overlaps


# -- installed release, re-applying, closing ---------------------------------------------


def test_installed_release_does_not_alias_the_applied_file(tmp_path) -> None:
    key = generate_key()
    folder = tmp_path / "device"
    _, release = _signed(1)
    download = tmp_path / "download.stamen"
    download.write_bytes(release)
    with _open(folder, key) as device:
        device.apply_release(download)
        device.record("item-1", "play")
    download.write_bytes(b"partial download of the next release")
    with _open(folder, key, pin=False) as device:
        assert (folder / RELEASE_FILE).read_bytes() == release
        assert device.release is not None and device.release.number == 1


def test_reapplying_the_release_is_a_no_op_for_gradient_losses(tmp_path) -> None:
    _, release = _signed(1, loss="bpr")
    with _open(tmp_path / "device", generate_key()) as device:
        device.apply_release(release)
        device.record("item-1", "play")
        device.record("item-2", "play")
        factor = device.user_factor
        device.apply_release(release)
        np.testing.assert_array_equal(device.user_factor, factor)


def test_every_call_after_close_raises(tmp_path) -> None:
    _, release = _signed(1)
    device = _open(tmp_path / "device", generate_key())
    device.apply_release(release)
    device.record("item-1", "play")
    device.close()
    with pytest.raises(DeviceClosedError):
        device.item_indices()
    with pytest.raises(DeviceClosedError):
        _ = device.user_factor
    with pytest.raises(DeviceClosedError):
        _ = device.release
    with pytest.raises(DeviceClosedError):
        device.recommend()


def test_linked_release_shares_the_server_file(tmp_path) -> None:
    _, release = _signed(1)
    published = tmp_path / "release-000001.stamen"
    published.write_bytes(release)
    with _open(tmp_path / "device", generate_key()) as device:
        device.apply_release(published, link=True)
        installed = tmp_path / "device" / RELEASE_FILE
        assert installed.stat().st_ino == published.stat().st_ino
        assert device.release is not None and device.release.number == 1
