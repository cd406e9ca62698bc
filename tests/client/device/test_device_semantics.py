"""What an app's calls mean: ``k``, ``exclude``, numpy scalars, context checked alike in
``record`` and ``recommend``."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.signed_releases import small_mf_release

from stamen.client import Device, EventError
from stamen.client.pipeline.recommend import PipelineSettings
from stamen.privacy import generate_key, generate_signing_key

PUBLISHER = generate_signing_key()
ITEMS = 20


@pytest.fixture
def device(tmp_path):
    with Device.open(
        tmp_path / "device",
        key=generate_key(),
        release_key=PUBLISHER[1],
        pipeline=PipelineSettings.retrieval_only(),
    ) as opened:
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
    with Device.open(
        tmp_path / "other", key=generate_key(), release_key=PUBLISHER[1]
    ) as other:
        assert other.restore(exported) == 4
        assert other.record("item-9", "play", event_id="tap-9").at == device.history()[-1].at
        assert len(other.history()) == 4
