"""The release bundle's bytes: decoded into views, not copies; malformed layouts, and
catalogue lookups that do not match the catalogue, refused by name; bundles made before
the lookups still read."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save as save_tensors

from stamen.errors import BundleError
from stamen.models.bundle import ReleaseBundle, ReleaseCatalog


def _bundle(n: int = 30) -> ReleaseBundle:
    rng = np.random.default_rng(0)
    return ReleaseBundle(
        release=2,
        model="mf",
        settings={"loss": "ials", "dim": 4},
        arrays={
            "items.weight": rng.normal(size=(n, 4)).astype(np.float32),
            "items.bias": rng.normal(size=n).astype(np.float32),
        },
        catalog=ReleaseCatalog.build(
            [f"id-{(7 * i) % n}" for i in range(n)],
            titles=[f"T{i}" for i in range(n)],
            genres=[("a", "b")[: i % 3] for i in range(n)],
        ),
        popularity=rng.random(n).astype(np.float32),
    )


def _tensors(data: bytes) -> tuple[dict, dict]:
    """The header and metadata of a safetensors buffer, to rebuild it changed."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    return header, header.pop("__metadata__")


def _with_header(data: bytes, header: dict, metadata: dict, tail: bytes = b"") -> bytes:
    (length,) = struct.unpack("<Q", data[:8])
    raw = json.dumps({**header, "__metadata__": metadata}).encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + length :] + tail


def test_a_writable_buffer_is_viewed_not_copied() -> None:
    data = bytearray(_bundle().encode())
    decoded = ReleaseBundle.decode(memoryview(data))
    weights = decoded.arrays["items.weight"]
    assert np.shares_memory(weights, np.frombuffer(data, np.uint8))
    assert np.array_equal(weights, _bundle().arrays["items.weight"])


def test_the_catalogue_lookups_travel_and_give_the_same_answers() -> None:
    bundle = _bundle()
    decoded = ReleaseBundle.decode(bundle.encode())
    ids = ["id-3", "id-29", "absent", "id-0"]
    assert decoded.catalog.index_of(ids).tolist() == bundle.catalog.index_of(ids).tolist()
    assert decoded.catalog.groups is not None  # read, not derived again
    for carried, derived in zip(
        decoded.catalog.genre_groups, bundle.catalog.genre_groups, strict=True
    ):
        assert carried.tolist() == derived.tolist()


def test_a_bundle_made_before_the_lookups_still_reads() -> None:
    data = _bundle().encode()
    header, metadata = _tensors(data)
    names = ["catalog/order", "catalog/group_of", "catalog/group_indptr", "catalog/group_members"]
    full = ReleaseBundle.decode(data)
    tensors = {
        name: np.asarray(full.catalog.to_tensors()[name]) for name in full.catalog.to_tensors()
    }
    tensors |= {f"model/{k}": v for k, v in full.arrays.items()} | {"popularity": full.popularity}
    old = save_tensors({k: v for k, v in tensors.items() if k not in names}, metadata=metadata)
    decoded = ReleaseBundle.decode(old)
    assert decoded.catalog.groups is None
    assert decoded.catalog.index_of(["id-3"]).tolist() == full.catalog.index_of(["id-3"]).tolist()
    assert header.keys() - set(names) == set(_tensors(old)[0])


def _with_tensor(name: str, value: np.ndarray) -> bytes:
    full = ReleaseBundle.decode(_bundle().encode())
    tensors = dict(full.catalog.to_tensors()) | {name: value}
    tensors |= {f"model/{k}": v for k, v in full.arrays.items()} | {"popularity": full.popularity}
    return save_tensors(tensors, metadata=_tensors(_bundle().encode())[1])


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("catalog/order", np.arange(30, dtype=np.int32), "does not sort its ids"),
        ("catalog/order", np.zeros(30, np.int32), "does not sort its ids"),
        ("catalog/order", np.full(30, 99, np.int32), "not a permutation"),
        ("catalog/order", np.zeros(29, np.int32), "not a permutation"),
        ("catalog/group_of", np.full(30, 1000, np.int32), "genre groups"),
        ("catalog/group_members", np.zeros(3, np.int32), "genre groups"),
        ("catalog/group_indptr", np.array([0, 5], np.int64), "genre groups"),
    ],
)
def test_lookups_that_do_not_match_the_catalogue_are_refused(name, value, message) -> None:
    with pytest.raises(BundleError, match=message):
        ReleaseBundle.decode(_with_tensor(name, value), source="r.stamen")


def _malformed() -> dict[str, bytes]:
    data = _bundle().encode()
    header, metadata = _tensors(data)

    def changed(name: str, field: str, value: object) -> bytes:
        entries = {k: dict(v) for k, v in header.items()}
        entries[name][field] = value
        return _with_header(data, entries, metadata)

    first = min(header, key=lambda k: header[k]["data_offsets"][0])
    return {
        "trailing bytes": _with_header(data, header, metadata, tail=b"\x00" * 8),
        "a gap": changed(first, "data_offsets", [4, header[first]["data_offsets"][1]]),
        "a shape that is not its bytes": changed("popularity", "shape", [31]),
        "an unknown dtype": changed("popularity", "dtype", "F8E4"),
        "a header longer than the file": struct.pack("<Q", 10**9) + data[8:100],
        "too short": data[:5],
    }


@pytest.mark.parametrize("case", list(_malformed()))
def test_malformed_layouts_are_refused_by_name(case) -> None:
    with pytest.raises(BundleError, match=r"^r\.stamen: not a Stamen release bundle"):
        ReleaseBundle.decode(_malformed()[case], source="r.stamen")
