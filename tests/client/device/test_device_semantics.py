"""What an app's calls mean: ``k``, ``exclude``, numpy scalars, context checked alike in
``record`` and ``recommend``."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.devices import retrieval_device
from helpers.signed_releases import small_mf_release

from stamen.client import Device, EventError
from stamen.client.pipeline.recommend import PipelineSettings
from stamen.models.bundle import ReleaseBundle
from stamen.privacy import generate_key, generate_signing_key, open_signed

PUBLISHER = generate_signing_key()
ITEMS = 20


@pytest.fixture
def device(tmp_path):
    with retrieval_device(tmp_path / "device", PUBLISHER[1]) as opened:
        opened.apply_release(small_mf_release(1, PUBLISHER[0], n=ITEMS))
        opened.record_many([{"item": f"item-{i}", "kind": "play"} for i in range(3)])
        yield opened


def test_k_gives_every_eligible_item_when_it_asks_for_more(device) -> None:
    picks = device.recommend(k=5000)
    assert len(picks) == ITEMS - 3  # the catalogue less the person's own three
    assert len({p.item for p in picks}) == len(picks)
    assert len(device.recommend(k=5000, exclude=["item-10", "item-11"])) == ITEMS - 5
    assert len(device.recommend(k=np.int64(4))) == 4


def test_exclude_takes_a_collection_of_ids_not_a_string(device) -> None:
    with pytest.raises(TypeError, match=r"exclude=\['item-5'\]"):
        device.recommend(k=3, exclude="item-5")
    picks = device.recommend(k=ITEMS, exclude=np.array(["item-5", "item-6"]))
    assert {"item-5", "item-6"}.isdisjoint(p.item for p in picks)


def test_numpy_scalars_are_numbers(device) -> None:
    event = device.record("item-7", "rating", value=np.float32(4.5), at=np.int64(1.7e9))
    assert event.value == 4.5 and type(event.value) is float and event.at == 1.7e9
    event = device.record("item-8", "play", context={"hour": np.int64(21), "premium": np.bool_(1)})
    assert event.context == {"hour": 21, "premium": True}
    assert type(event.context["hour"]) is int and type(event.context["premium"]) is bool


@pytest.mark.parametrize(
    "context",
    [{"hour": 99}, {"weekday": -1}, {"hour": 3.5}, {"tags": ["a"]}, "evening"],
)
def test_context_is_checked_alike_by_record_and_recommend(device, context) -> None:
    with pytest.raises(EventError, match="field 'context'"):
        device.record("item-9", "play", context=context)
    with pytest.raises(EventError, match="field 'context'"):
        device.recommend(k=3, context=context)


def test_a_retried_record_with_its_event_id_is_stored_once(device) -> None:
    first = device.record("item-9", "rating", value=4.0, at=1.7e9, event_id="tap-1")
    again = device.record("item-9", "rating", value=4.0, at=1.7e9 + 5, event_id="tap-1")
    assert again == first and first.id == "tap-1"
    batch = [
        {"item": "item-10", "kind": "play", "id": "tap-2"},
        {"item": "item-10", "kind": "play", "id": "tap-2"},  # a retry inside the batch
        {"item": "item-11", "kind": "play", "id": "tap-1"},  # a retry of the first call
        {"item": "item-12", "kind": "play"},  # no id: always stored
    ]
    assert device.record_many(batch) == 2
    ids = [e.id for e in device.history()]
    assert ids.count("tap-1") == 1 and ids.count("tap-2") == 1
    assert len(device.history()) == 3 + 3  # the fixture's three, then three new
    with pytest.raises(EventError, match="field 'id'"):
        device.record("item-9", "play", event_id="")


def test_event_ids_survive_export_and_restore(device, tmp_path) -> None:
    device.record("item-9", "play", event_id="tap-9")
    exported = device.export()
    with Device.open(tmp_path / "other", key=generate_key(), release_key=PUBLISHER[1]) as other:
        assert other.restore(exported) == 4
        assert other.record("item-9", "play", event_id="tap-9").at == device.history()[-1].at
        assert len(other.history()) == 4


def _fresh(tmp_path, name: str, **kwargs) -> Device:
    device = Device.open(
        tmp_path / name,
        key=generate_key(),
        release_key=PUBLISHER[1],
        pipeline=PipelineSettings.retrieval_only(),
        **kwargs,
    )
    device.apply_release(small_mf_release(1, PUBLISHER[0], n=ITEMS))
    return device


def test_a_low_rating_is_negative_feedback_and_lowers_the_items_neighbours(tmp_path) -> None:
    liked, disliked = _fresh(tmp_path, "liked"), _fresh(tmp_path, "disliked")
    for device, stars in ((liked, 5), (disliked, 1)):
        device.record("item-4", "play", at=1.0)  # a shared history: item-4 …
        device.record("item-0", "rating", value=stars, at=2.0)  # … then item-0, 5★ or 1★
    neighbour = _nearest(liked, "item-0", among=[f"item-{i}" for i in range(5, ITEMS)])
    rank = {
        name: [p.item for p in device.recommend(k=ITEMS)].index(neighbour)
        for name, device in (("liked", liked), ("disliked", disliked))
    }
    assert rank["disliked"] > rank["liked"]  # the 1★ item's neighbour falls
    assert "item-0" in _item_ids(liked) and "item-0" not in _item_ids(disliked)
    reasons = [p.reason for p in disliked.recommend(k=ITEMS)]
    assert not any("Title 0" in reason for reason in reasons)  # never "Because you rated" it
    assert all(p.item != "item-0" for p in disliked.recommend(k=ITEMS))  # nor recommended


def test_the_rating_threshold_follows_the_apps_scale(tmp_path) -> None:
    thumbs = _fresh(tmp_path, "thumbs", rating_threshold=0.0)
    thumbs.record("item-1", "rating", value=1)
    thumbs.record("item-2", "rating", value=-1)
    assert _item_ids(thumbs) == ["item-1"]
    every = _fresh(tmp_path, "every", rating_threshold=None)  # every rating is a like
    every.record("item-2", "rating", value=1)
    assert _item_ids(every) == ["item-2"]


def _nearest(device: Device, item: str, among: list[str]) -> str:
    """The item of ``among`` whose release factor is closest in direction to ``item``'s."""
    payload = open_signed(small_mf_release(1, PUBLISHER[0], n=ITEMS), public_key=PUBLISHER[1])
    factors = ReleaseBundle.decode(payload).arrays["items.weight"]
    table = factors[device.catalog.index_of([item, *among])]
    unit = table / np.linalg.norm(table, axis=1, keepdims=True)
    return among[int(np.argmax(unit[1:] @ unit[0]))]


def _item_ids(device: Device) -> list[str]:
    return [device.catalog.item_id(int(row)) for row in device.item_indices()]


def test_similar_items_by_cosine_with_a_reason(device) -> None:
    payload = open_signed(small_mf_release(1, PUBLISHER[0], n=ITEMS), public_key=PUBLISHER[1])
    factors = ReleaseBundle.decode(payload).arrays["items.weight"].astype(np.float64)
    unit = factors / np.linalg.norm(factors, axis=1, keepdims=True)
    cosine = unit @ unit[10]
    picks = device.similar("item-10", k=4, exclude=["item-11"])
    never = {10, 11, 0, 1, 2}  # itself, the excluded one and the person's three
    want = [i for i in np.argsort(-cosine) if i not in never][:4]
    assert [p.item for p in picks] == [f"item-{i}" for i in want]
    assert [p.score for p in picks] == pytest.approx(cosine[want], abs=1e-5)
    assert all(p.reason == "Similar to Title 10" and p.source == "similar" for p in picks)
    seen = device.similar("item-10", k=ITEMS, include_seen=True)
    assert {"item-0", "item-1", "item-2"} <= {p.item for p in seen} and len(seen) == ITEMS - 1
    with pytest.raises(KeyError, match="not in the installed release"):
        device.similar("no-such-item")


def test_recommend_many_fills_several_surfaces_at_once(device) -> None:
    lists = device.recommend_many(
        {"top": {"k": 3}, "more": {"k": 3, "exclude": ["item-5"]}}, distinct=True
    )
    top, more = [p.item for p in lists["top"]], [p.item for p in lists["more"]]
    assert top == [p.item for p in device.recommend(k=3)]
    assert len(more) == 3 and not set(top) & set(more) and "item-5" not in more
    with pytest.raises(TypeError, match="surface 'x': unknown arguments \\['kk'\\]"):
        device.recommend_many({"x": {"kk": 3}})
    with pytest.raises(EventError, match="surface 'y'"):
        device.recommend_many({"y": {"context": {"hour": 99}}})
