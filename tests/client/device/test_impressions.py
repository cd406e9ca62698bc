"""The on-device impression log and inverse-propensity estimates of another policy."""

from __future__ import annotations

import numpy as np
import pytest

from stamen.client import Device, Recommendation
from stamen.client.device.events import Event
from stamen.client.device.impressions import Impression, engagement_rewards, ips_estimate
from stamen.client.device.store import MIGRATIONS, SCHEMA_VERSION, EventStore
from stamen.privacy import generate_key, generate_signing_key, open_encrypted_database


def test_shown_lists_are_logged_with_position_propensity_and_source(tmp_path) -> None:
    _, public = generate_signing_key()
    shown = [
        Recommendation("a", 1.0, "Popular right now", "popular", 0.9),
        Recommendation("b", 0.5, "Something different", "explore", 0.05),
    ]
    with Device.open(tmp_path / "d", key=(key := generate_key()), release_key=public) as device:
        assert device.log_shown(shown, at=100.0) == 0
        assert device.log_shown(shown[:1], at=200.0) == 1
        device.record("b", "play", at=150.0)  # engaged with the explored item
    with Device.open(tmp_path / "d", key=key) as device:  # durable
        assert device.impressions() == [
            Impression(0, 0, "a", 0.9, "popular", 100.0),
            Impression(0, 1, "b", 0.05, "explore", 100.0),
            Impression(1, 0, "a", 0.9, "popular", 200.0),
        ]
        assert [i["item"] for i in device.export()["impressions"]] == ["a", "b", "a"]
        # a target policy that always shows b first: only the logged b slot counts
        value, _ = device.policy_value(lambda i: 1.0 if i.item == "b" else 0.0, window_s=60.0)
        assert value == pytest.approx((1.0 / 0.05) / 3)


def test_rewards_count_positive_events_inside_the_window_only() -> None:
    logged = [Impression(0, 0, "a", 1.0, "cf", 10.0), Impression(0, 1, "b", 1.0, "cf", 10.0)]
    events = [
        Event(item="a", kind="play", value=1.0, at=15.0, context={}),
        Event(item="b", kind="play", value=1.0, at=5.0, context={}),  # before it was shown
        Event(item="b", kind="not_interested", value=1.0, at=12.0, context={}),
    ]
    assert engagement_rewards(logged, events, window_s=10.0).tolist() == [1.0, 0.0]
    assert engagement_rewards(logged, events, window_s=1.0).tolist() == [0.0, 0.0]


def test_ips_recovers_a_target_policys_value_from_an_exploring_log() -> None:
    """Log: a uniform pick among 4 items; target: always item 2. Engagement probabilities
    are known, so the target's true value is p[2]; IPS must land within 4 standard errors."""
    rng = np.random.default_rng(0)
    p = np.array([0.1, 0.2, 0.6, 0.3])
    n = 20000
    shown = rng.integers(4, size=n)
    rewards = (rng.random(n) < p[shown]).astype(float)
    value, stderr = ips_estimate(rewards, np.full(n, 0.25), (shown == 2).astype(float))
    assert abs(value - p[2]) < 4 * stderr and stderr < 0.02
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        ips_estimate(rewards[:2], np.array([0.0, 0.5]), np.ones(2))
    with pytest.raises(ValueError, match="differ in length"):
        ips_estimate(rewards[:2], np.ones(3), np.ones(2))


def test_a_version_1_store_gains_the_impression_log_and_event_ids_and_keeps_its_events(
    tmp_path,
) -> None:
    key = generate_key()
    folder = tmp_path / "old"
    folder.mkdir()
    db = open_encrypted_database(folder / "device.db", key=key)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
    db.execute(
        "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, item TEXT NOT NULL, "
        "kind TEXT NOT NULL, value REAL NOT NULL, at REAL NOT NULL, context TEXT)"
    )
    db.execute("INSERT INTO events(item, kind, value, at) VALUES ('x', 'play', 1.0, 3.0)")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    store = EventStore(folder, key=key)
    try:
        assert [(e.item, e.id) for e in store.events()] == [("x", None)]
        assert store.impressions() == [] and store.next_request() == 0
        assert SCHEMA_VERSION == 4
    finally:
        store.close()


def test_a_version_3_store_gains_latencies_and_keeps_its_impressions_without_one(
    tmp_path,
) -> None:
    key = generate_key()
    folder = tmp_path / "v3"
    folder.mkdir()
    db = open_encrypted_database(folder / "device.db", key=key)
    for version in range(3):  # the schema as version 3 left it
        MIGRATIONS[version](db)
    db.execute(
        "INSERT INTO impressions(request, position, item, propensity, source, at) "
        "VALUES (0, 0, 'a', 0.5, 'cf', 10.0)"
    )
    db.execute("PRAGMA user_version = 3")
    db.commit()
    db.close()
    store = EventStore(folder, key=key)
    try:
        assert store.impressions() == [Impression(0, 0, "a", 0.5, "cf", 10.0, None)]
        store.log_impressions([Impression(1, 0, "b", 1.0, "cf", 20.0, 0.25)])
        assert [i.latency_s for i in store.impressions()] == [None, 0.25]
    finally:
        store.close()


def test_log_shown_records_the_latency_recommend_measured(tmp_path) -> None:
    from helpers.signed_releases import small_mf_release

    private, public = generate_signing_key()
    with Device.open(tmp_path / "d", key=generate_key(), release_key=public, seed=0) as device:
        device.apply_release(small_mf_release(1, private))
        shown = device.recommend(4, at=100.0)
        latency = shown[0].latency_s
        assert latency is not None and latency > 0
        assert {p.latency_s for p in shown} == {latency}  # one list, one latency
        device.log_shown(shown, at=100.0)
        # a list the app built, and one merged from two lists: no measured latency
        device.log_shown([Recommendation("x", 1.0, "", "app")], at=200.0)
        merged = [*shown[:1], *device.recommend(2, exclude=[shown[0].item], at=300.0)]
        device.log_shown(merged, at=300.0)
        logged = device.impressions()
    assert [i.latency_s for i in logged] == [latency] * 4 + [None] * (1 + 3)
