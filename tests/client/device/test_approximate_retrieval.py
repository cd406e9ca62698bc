"""A release with an approximate item index (``stamen.models.item_index``), from the
publisher's ``ReleaseWriter`` to the device's ``recommend``: the index is used where faiss
is, the catalogue scored whole where it is not (said, not silent), and the lists agree."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.devices import retrieval_device

from stamen.models.bundle import ReleaseCatalog
from stamen.models.item_index import EXACT_BELOW
from stamen.models.registry import build_model
from stamen.privacy import generate_signing_key
from stamen.server.releases import ReleaseWriter

pytest.importorskip("faiss")

ITEMS, DIM = 20_000, 16


def _publish(folder: Path, item_index: bool | None) -> tuple[Path, bytes]:
    """Release 1 of an ``ials`` MF model whose items cluster around 200 centres (as
    trained factors do), published with or without the index; its file and public key."""
    rng = np.random.default_rng(7)
    ids = [f"item-{i}" for i in range(ITEMS)]
    catalog = ReleaseCatalog.build(ids, titles=ids)
    model = build_model("mf", {"loss": "ials", "dim": DIM, "alpha": 1.0, "l2": 2.0}, catalog)
    centres = rng.normal(0.0, 0.5, (200, DIM))
    items = centres[rng.integers(0, 200, ITEMS)] + rng.normal(0.0, 0.1, (ITEMS, DIM))
    shared = [items.astype(np.float32), rng.normal(0.0, 0.1, ITEMS).astype(np.float32)]
    private, public = generate_signing_key()
    writer = ReleaseWriter(
        folder, private_key=private, public_key=public, model=model, item_index=item_index
    )
    return writer.publish(1, shared), public


def _lists(release: Path, public: bytes, folder: Path) -> tuple[str, list[list[str]]]:
    """The retrieval a device reports and its top 10 for five people (a device each)."""
    people = np.random.default_rng(3).integers(0, ITEMS, (5, 30))
    retrieval, lists = "", []
    for k, person in enumerate(people):
        with retrieval_device(folder / str(k), public) as device:
            device.apply_release(release)
            retrieval = device.release.retrieval if device.release else ""
            device.record_many([{"item": f"item-{i}", "kind": "play"} for i in person])
            lists.append([r.item for r in device.recommend(10)])
    return retrieval, lists


def test_the_publisher_indexes_large_catalogues_only_unless_asked(tmp_path) -> None:
    assert ITEMS < EXACT_BELOW
    default, _ = _publish(tmp_path / "default", None)
    asked, _ = _publish(tmp_path / "asked", True)
    assert asked.stat().st_size > default.stat().st_size  # the index's codes ride along


def test_a_device_serves_through_the_index_and_agrees_with_exact(tmp_path) -> None:
    indexed, public = _publish(tmp_path / "indexed", True)
    plain, plain_public = _publish(tmp_path / "plain", False)
    retrieval, approximate = _lists(indexed, public, tmp_path / "a")
    exact_retrieval, exact = _lists(plain, plain_public, tmp_path / "e")
    assert (retrieval, exact_retrieval) == ("approximate", "exact")
    # the index proposes 4,000 of 20,000 items and re-scores them exactly: an exact top-10
    # item is missed only when its coded score falls below the 4,000th (the top 20%),
    # far rarer than the 4% of the index's own recall test (tests/models/test_item_index.py)
    overlap = [len(set(a) & set(e)) / 10 for a, e in zip(approximate, exact, strict=True)]
    assert np.mean(overlap) >= 0.9


def test_without_faiss_the_index_is_said_unused_and_every_item_scored(
    tmp_path, monkeypatch, caplog
) -> None:
    indexed, public = _publish(tmp_path / "indexed", True)
    plain, plain_public = _publish(tmp_path / "plain", False)
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss raises ImportError
    with caplog.at_level(logging.WARNING, logger="stamen.device"):
        retrieval, lists = _lists(indexed, public, tmp_path / "a")
    assert retrieval.startswith("exact: the release's item index needs faiss")
    assert "pip install faiss-cpu" in caplog.text
    assert lists == _lists(plain, plain_public, tmp_path / "e")[1]
