"""The release bundle: one file holding everything a device needs to recommend.

A bundle is a safetensors file (arrays as raw little-endian bytes under a JSON header;
loading it executes no code) whose header metadata ``"stamen"`` holds a JSON manifest:

    format      bundle format version (``BUNDLE_FORMAT``)
    release     release number (the server's round; devices refuse older ones)
    identity    whose releases these are (``ReleaseIdentity``: the publisher's app id and
                its catalogue's name); absent in bundles made before identities
    model       model kind (``"mf"``) and ``settings`` (the local settings it trains with)
    arrays      names of the shared arrays, in upload order
    quantized   names of arrays stored as int8 with a per-row scale
    catalog     genre and region names
    ranker      how many ranker arrays the bundle holds (0: none)
    extras      JSON room for later stages

and whose tensors are the shared arrays (``model/<name>``; an int8 table as
``model/<name>:int8`` plus ``model/<name>:scale``), the catalogue columns
(``catalog/...``: the app's item ids, titles, genres, release year, first-seen time,
regions, and the lookups a device would otherwise derive on every open: the ids' sort
order and the items grouped by genre set), ``popularity`` (a score per item for the
no-history fallback) and, when the release carries them, ``trending`` (recent
interaction counts, privately aggregated) and the ranker's weights (``ranker/<k>``,
``stamen.models.ranker.weights``), and for a large catalogue an approximate item index
(``index/items``, ``stamen.models.item_index``: bytes a device reads with faiss).

Decoding a writable buffer reads no array: each is a view into it, so a release file
memory-mapped copy-on-write (``mmap.ACCESS_COPY``, as a device maps it) is paged in as the
device reads it, never copied whole.

This module is the format only; ``stamen.privacy.seal_signed`` signs a bundle's bytes
for distribution and ``stamen.privacy.open_signed`` checks them on the device.
"""

from __future__ import annotations

import functools
import json
import math
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stamen.errors import BundleError
from stamen.models.quantize import ItemTable
from stamen.models.ranker.weights import check_ranker
from stamen.models.schema import Catalog

__all__ = [
    "BUNDLE_FORMAT",
    "LATEST_POINTER",
    "ReleaseBundle",
    "ReleaseCatalog",
    "ReleaseIdentity",
    "latest_release",
]

BUNDLE_FORMAT = 1
#: The file in a releases folder that names its newest release file.
LATEST_POINTER = "latest"
_MODEL = "model/"
_RANKER = "ranker/"
_CATALOG = "catalog/"
_INDEX = "index/items"


def _strings(values: Sequence[str], what: str) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 blob and offsets ``(n + 1,)`` of a column of strings."""
    encoded = [str(v).encode("utf-8") for v in values]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    blob = np.frombuffer(b"".join(encoded), np.uint8).copy()
    if not len(blob):
        blob = np.zeros(0, np.uint8)
    return blob, offsets


def _ragged(groups: Sequence[Sequence[str]], names: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    index = {name: j for j, name in enumerate(names)}
    indptr = np.zeros(len(groups) + 1, np.int64)
    np.cumsum([len(g) for g in groups], out=indptr[1:])
    flat = np.array([index[g] for gs in groups for g in gs], np.int32)
    return indptr, flat


@dataclass(frozen=True, eq=False)
class ReleaseCatalog:
    """The catalogue as a device holds it: columnar, so a million items cost arrays, not
    a million Python objects. Item ``i`` is row ``i`` of every model array.

    ``item_ids`` are the app's own string ids (UTF-8, fixed-width bytes for lookup);
    ``year`` 0 and ``first_seen`` -1 mean unknown; an item with no regions is available
    everywhere.
    """

    item_ids: np.ndarray
    title_blob: np.ndarray
    title_offsets: np.ndarray
    genre_names: tuple[str, ...]
    genre_indptr: np.ndarray
    genre_index: np.ndarray
    year: np.ndarray
    first_seen: np.ndarray
    region_names: tuple[str, ...] = ()
    region_indptr: np.ndarray | None = None
    region_index: np.ndarray | None = None
    order: np.ndarray | None = field(default=None, repr=False)
    groups: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    _sorted_ids: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        checks = {
            "title_offsets": len(self.title_offsets) == n + 1,
            "genre_indptr": len(self.genre_indptr) == n + 1,
            "year": len(self.year) == n,
            "first_seen": len(self.first_seen) == n,
        }
        if self.region_indptr is not None:
            checks["region_indptr"] = len(self.region_indptr) == n + 1
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise BundleError(f"catalogue columns {bad} do not match its {n} items")
        if self.order is None:
            order = np.argsort(self.item_ids, kind="stable")
            ordered = self.item_ids[order]
            if n > 1 and (ordered[1:] == ordered[:-1]).any():
                first = ordered[1:][ordered[1:] == ordered[:-1]][0]
                raise BundleError(f"catalogue item id {first.decode()!r} appears twice")
            object.__setattr__(self, "order", order)
        else:  # the release's own: strictly increasing ids in range make it the sort order
            order = self.order
            if (
                order.shape != (n,)
                or order.dtype.kind not in "iu"
                or (n and (order.min() < 0 or order.max() >= n))
            ):
                raise BundleError(f"catalogue order is not a permutation of its {n} items")
            ordered = self.item_ids[order]
            if n > 1 and not (ordered[1:] > ordered[:-1]).all():
                raise BundleError("catalogue order does not sort its ids, or an id repeats")
        object.__setattr__(self, "_sorted_ids", ordered)
        if self.groups is not None:
            group_of, indptr, members = self.groups
            if (
                any(part.dtype.kind not in "iu" for part in self.groups)
                or group_of.shape != (n,)
                or members.shape != (n,)
                or indptr.ndim != 1
                or (n and (group_of.min() < 0 or group_of.max() >= len(indptr) - 1))
                or (n and (members.min() < 0 or members.max() >= n))
                or (len(indptr) and (indptr[0] != 0 or indptr[-1] != n))
            ):
                raise BundleError(f"catalogue genre groups do not match its {n} items")

    def __len__(self) -> int:
        return len(self.item_ids)

    @classmethod
    def build(
        cls,
        item_ids: Sequence[str],
        *,
        titles: Sequence[str],
        genres: Sequence[Sequence[str]] | None = None,
        year: Sequence[int] | np.ndarray | None = None,
        first_seen: Sequence[int] | np.ndarray | None = None,
        regions: Sequence[Sequence[str]] | None = None,
    ) -> ReleaseCatalog:
        """A catalogue from Python columns (``None``: unknown for every item).

        Raises:
            BundleError: an id is empty or holds a NUL character, or columns differ in
                length.
        """
        n = len(item_ids)
        encoded = [str(i).encode("utf-8") for i in item_ids]
        if any(not e or b"\x00" in e for e in encoded):
            raise BundleError("catalogue item ids must be non-empty and free of NUL")
        width = max((len(e) for e in encoded), default=1)
        ids = np.array(encoded, dtype=f"S{width}") if n else np.zeros(0, "S1")
        if len(titles) != n:
            raise BundleError(f"catalogue has {n} ids but {len(titles)} titles")
        blob, offsets = _strings(titles, "titles")
        genres = genres if genres is not None else [()] * n
        genre_names = tuple(sorted({g for gs in genres for g in gs}))
        genre_indptr, genre_index = _ragged(genres, genre_names)
        region_names: tuple[str, ...] = ()
        region_indptr = region_index = None
        if regions is not None:
            region_names = tuple(sorted({r for rs in regions for r in rs}))
            region_indptr, region_index = _ragged(regions, region_names)
        return cls(
            item_ids=ids,
            title_blob=blob,
            title_offsets=offsets,
            genre_names=genre_names,
            genre_indptr=genre_indptr,
            genre_index=genre_index,
            year=np.zeros(n, np.int32) if year is None else np.asarray(year, np.int32),
            first_seen=(
                np.full(n, -1, np.int64) if first_seen is None else np.asarray(first_seen, np.int64)
            ),
            region_names=region_names,
            region_indptr=region_indptr,
            region_index=region_index,
        )

    @classmethod
    def from_catalog(cls, catalog: Catalog) -> ReleaseCatalog:
        """The release form of a data set's ``Catalog`` (ids become strings)."""
        first_seen = None if catalog.first_seen is None else np.asarray(catalog.first_seen)
        return cls.build(
            [str(i) for i in catalog.item_ids],
            titles=catalog.titles,
            genres=catalog.genres,
            year=catalog.year,
            first_seen=first_seen,
        )

    def item_id(self, index: int) -> str:
        """The app's id of item ``index``."""
        return self.item_ids_of([index])[0]

    def item_ids_of(self, rows: Sequence[int] | np.ndarray) -> list[str]:
        """The app's ids of items ``rows``, in one indexing of the catalogue."""
        return [i.decode("utf-8") for i in self.item_ids[np.asarray(rows, np.int64)].tolist()]

    def title(self, index: int) -> str:
        """The title of item ``index``."""
        start, end = self.title_offsets[index], self.title_offsets[index + 1]
        return self.title_blob[start:end].tobytes().decode("utf-8")

    def genres(self, index: int) -> tuple[str, ...]:
        """The genres of item ``index``."""
        rows = self.genre_index[self.genre_indptr[index] : self.genre_indptr[index + 1]]
        return tuple(self.genre_names[j] for j in rows)

    def regions(self, index: int) -> tuple[str, ...]:
        """Regions where item ``index`` is available (empty: everywhere)."""
        if self.region_indptr is None or self.region_index is None:
            return ()
        rows = self.region_index[self.region_indptr[index] : self.region_indptr[index + 1]]
        return tuple(self.region_names[j] for j in rows)

    @functools.cached_property
    def genre_groups(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Items with the same set of genres (tags) form a group (a content score depends
        on nothing else): each row's group, and the rows of each group in CSR form
        (``indptr``, members ascending). Groups are numbered as ``np.unique(axis=0)``
        numbers the sorted genre rows. Read from the release where it carries them."""
        if self.groups is not None:
            return self.groups
        indptr = np.asarray(self.genre_indptr, np.int64)
        counts = np.diff(indptr)
        n, width = len(counts), int(counts.max(initial=0))
        filled = np.arange(width) < counts[:, None]
        padded = np.full((n, width), np.iinfo(np.int64).max, np.int64)
        padded[filled] = np.asarray(self.genre_index, np.int64)
        rows = np.sort(padded, axis=1)
        # the rows in lexicographic order (what np.unique(axis=0) sorts by, a hundred
        # times faster than its sort of void records at a million items); a group starts
        # where a row differs from the one before it
        order = np.lexsort(rows.T[::-1]) if width else np.arange(n)
        ranked = rows[order]
        starts = np.ones(n, bool)
        starts[1:] = np.any(ranked[1:] != ranked[:-1], axis=1)
        group_of = np.empty(n, np.int64)
        group_of[order] = np.cumsum(starts) - 1
        members = np.argsort(group_of, kind="stable").astype(np.int64)
        sizes = np.bincount(group_of, minlength=int(group_of.max(initial=-1)) + 1)
        return group_of, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64), members

    def index_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """Row of each app id, ``-1`` for ids this catalogue does not hold (batched)."""
        if not len(item_ids) or not len(self):
            return np.full(len(item_ids), -1, np.int64)
        width = self.item_ids.dtype.itemsize
        wanted = np.array([str(i).encode("utf-8") for i in item_ids], dtype=object)
        too_long = np.array([len(w) > width for w in wanted], bool)
        query = np.array([w[:width] for w in wanted], dtype=f"S{width}")
        pos = np.minimum(np.searchsorted(self._sorted_ids, query), len(self) - 1)
        found = (self._sorted_ids[pos] == query) & ~too_long
        assert self.order is not None  # set in __post_init__
        return np.where(found, self.order[pos], -1).astype(np.int64)

    def to_tensors(self) -> dict[str, np.ndarray]:
        """The columns as named arrays (ids as a ``(n, width)`` uint8 matrix)."""
        width = self.item_ids.dtype.itemsize
        tensors = {
            "ids": self.item_ids.view(np.uint8).reshape(len(self), width),
            "title_blob": self.title_blob,
            "title_offsets": self.title_offsets,
            "genre_indptr": self.genre_indptr,
            "genre_index": self.genre_index,
            "year": self.year,
            "first_seen": self.first_seen,
        }
        if self.region_indptr is not None and self.region_index is not None:
            tensors["region_indptr"] = self.region_indptr
            tensors["region_index"] = self.region_index
        index = np.int32 if len(self) < 2**31 else np.int64
        assert self.order is not None  # set in __post_init__
        tensors["order"] = self.order.astype(index)
        group_of, indptr, members = self.genre_groups
        tensors["group_of"] = group_of.astype(index)
        tensors["group_members"] = members.astype(index)
        tensors["group_indptr"] = indptr.astype(np.int64)
        return {f"{_CATALOG}{name}": array for name, array in tensors.items()}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Any:
        """Inverse of :meth:`to_tensors` with the manifest's ``catalog`` entry."""

        def get(name: str) -> np.ndarray:
            try:
                return tensors[f"{_CATALOG}{name}"]
            except KeyError:
                raise BundleError(f"bundle lacks the catalogue column {name!r}") from None

        raw = get("ids")
        if raw.ndim != 2 or raw.dtype != np.uint8:
            raise BundleError("catalogue ids must be a 2-D uint8 matrix")
        ids = np.ascontiguousarray(raw).view(f"S{max(raw.shape[1], 1)}").reshape(raw.shape[0])
        regions = f"{_CATALOG}region_indptr" in tensors
        lookups = f"{_CATALOG}order" in tensors  # releases before them lack them
        groups = (get("group_of"), get("group_indptr"), get("group_members")) if lookups else None
        return cls(
            item_ids=ids,
            title_blob=get("title_blob"),
            title_offsets=get("title_offsets"),
            genre_names=tuple(meta.get("genre_names", ())),
            genre_indptr=get("genre_indptr"),
            genre_index=get("genre_index"),
            year=get("year"),
            first_seen=get("first_seen"),
            region_names=tuple(meta.get("region_names", ())),
            region_indptr=get("region_indptr") if regions else None,
            region_index=get("region_index") if regions else None,
            order=get("order") if lookups else None,
            groups=groups,
        )


@dataclass(frozen=True)
class ReleaseIdentity:
    """Whose releases these are: the publisher's ``app`` id and the name of the
    ``catalog`` the items come from. A device pins the identity and the model kind of its
    first release and refuses a release of another (``stamen.client.device.releases``)."""

    app: str
    catalog: str

    def __post_init__(self) -> None:
        for name in ("app", "catalog"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip() or len(value) > 200:
                raise BundleError(f"release identity: {name} must be 1 to 200 characters")

    def to_json(self) -> dict[str, str]:
        """The manifest's ``identity`` object."""
        return {"app": self.app, "catalog": self.catalog}


@dataclass(frozen=True, eq=False)
class ReleaseBundle:
    """One model release (see module docstring). ``arrays`` are the shared arrays in
    upload order as float32; a decoded bundle that stored a table as int8 holds it in
    ``quantized`` instead (``table`` serves both; ``shared_arrays`` dequantises)."""

    release: int
    model: str
    settings: Mapping[str, Any]
    arrays: Mapping[str, np.ndarray]
    catalog: ReleaseCatalog
    popularity: np.ndarray
    extras: Mapping[str, Any] = field(default_factory=dict)
    quantized: Mapping[str, ItemTable] = field(default_factory=dict)
    names: tuple[str, ...] = ()
    trending: np.ndarray | None = None
    ranker: tuple[np.ndarray, ...] | None = None
    identity: ReleaseIdentity | None = None
    item_index: np.ndarray | None = None

    def __post_init__(self) -> None:
        if isinstance(self.release, bool) or int(self.release) < 0:
            raise BundleError(f"release number must be a non-negative integer ({self.release!r})")
        if not self.names:
            object.__setattr__(self, "names", tuple(self.arrays) + tuple(self.quantized))
        n = len(self.catalog)
        if self.popularity.shape != (n,):
            raise BundleError(f"popularity has shape {self.popularity.shape}, expected ({n},)")
        if self.trending is not None and self.trending.shape != (n,):
            raise BundleError(f"trending has shape {self.trending.shape}, expected ({n},)")
        if self.item_index is not None and (
            self.item_index.ndim != 1 or self.item_index.dtype != np.uint8
        ):
            raise BundleError("the item index must be a 1-D array of bytes (uint8)")
        if self.ranker is not None:
            try:
                check_ranker(list(self.ranker))
            except ValueError as error:
                raise BundleError(str(error)) from None
        for name in self.names:
            if name not in self.arrays and name not in self.quantized:
                raise BundleError(f"bundle lacks the array {name!r}")
            rows = len(self.quantized[name]) if name in self.quantized else None
            if rows is not None and rows != n:  # other shapes: the model checks them
                raise BundleError(f"int8 table {name!r} has {rows} rows, the catalogue {n}")

    def table(self, name: str) -> ItemTable:
        """Array ``name`` as a scoring table (the int8 form when it was stored so)."""
        if name in self.quantized:
            return self.quantized[name]
        return ItemTable.dense(self.arrays[name])

    def shared_arrays(self) -> list[np.ndarray]:
        """The shared arrays in upload order, float32 (int8 tables dequantised)."""
        return [
            self.quantized[n].dense_values() if n in self.quantized else self.arrays[n]
            for n in self.names
        ]

    def encode(self, *, quantize: Sequence[str] = ()) -> bytes:
        """The bundle's bytes; arrays named in ``quantize`` are stored as int8 rows with a
        float32 scale per row (about a quarter of the bytes)."""
        tensors: dict[str, np.ndarray] = {}
        stored_int8 = []
        for name in self.names:
            if name in quantize or name in self.quantized:
                table = self.quantized.get(name) or ItemTable.quantize(self.arrays[name])
                assert table.scale is not None  # a table in quantized is int8
                tensors[f"{_MODEL}{name}:int8"] = table.values
                tensors[f"{_MODEL}{name}:scale"] = table.scale
                stored_int8.append(name)
            else:
                tensors[f"{_MODEL}{name}"] = np.ascontiguousarray(self.arrays[name], np.float32)
        tensors.update(self.catalog.to_tensors())
        tensors["popularity"] = np.ascontiguousarray(self.popularity, np.float32)
        if self.trending is not None:
            tensors["trending"] = np.ascontiguousarray(self.trending, np.float32)
        for k, weights in enumerate(self.ranker or ()):
            tensors[f"{_RANKER}{k}"] = np.ascontiguousarray(weights, np.float32)
        if self.item_index is not None:
            tensors[_INDEX] = np.ascontiguousarray(self.item_index, np.uint8)
        manifest = {
            "format": BUNDLE_FORMAT,
            "release": int(self.release),
            "model": self.model,
            "settings": dict(self.settings),
            "arrays": list(self.names),
            "quantized": stored_int8,
            "catalog": {
                "genre_names": list(self.catalog.genre_names),
                "region_names": list(self.catalog.region_names),
            },
            "ranker": len(self.ranker or ()),
            "extras": dict(self.extras),
        }
        if self.identity is not None:
            manifest["identity"] = self.identity.to_json()
        from safetensors.numpy import save as save_tensors  # publishers only: devices decode

        return save_tensors(tensors, metadata={"stamen": json.dumps(manifest)})

    @classmethod
    def decode(cls, data: bytes | memoryview, *, source: str = "bundle") -> ReleaseBundle:
        """Read a bundle's bytes (no code runs: safetensors and JSON only).

        Raises:
            BundleError: not a bundle, an unsupported format, or missing or inconsistent
                parts; the message starts with ``source``.
        """
        try:
            tensors, metadata = _tensor_views(data)
            manifest = json.loads(metadata["stamen"])
        except (ValueError, KeyError, TypeError, IndexError, struct.error) as error:
            raise BundleError(f"{source}: not a Stamen release bundle ({error})") from None
        if manifest.get("format") != BUNDLE_FORMAT:
            raise BundleError(
                f"{source}: bundle format {manifest.get('format')!r}; this build reads "
                f"{BUNDLE_FORMAT}"
            )
        try:
            arrays: dict[str, np.ndarray] = {}
            quantized: dict[str, ItemTable] = {}
            ranker = int(manifest.get("ranker", 0))
            for name in manifest["arrays"]:
                if name in manifest["quantized"]:
                    quantized[name] = ItemTable(
                        tensors[f"{_MODEL}{name}:int8"], tensors[f"{_MODEL}{name}:scale"]
                    )
                else:
                    arrays[name] = tensors[f"{_MODEL}{name}"]
            return cls(
                release=int(manifest["release"]),
                model=str(manifest["model"]),
                settings=dict(manifest["settings"]),
                arrays=arrays,
                catalog=ReleaseCatalog.from_tensors(tensors, manifest["catalog"]),
                popularity=tensors["popularity"],
                extras=dict(manifest.get("extras", {})),
                quantized=quantized,
                names=tuple(manifest["arrays"]),
                trending=tensors.get("trending"),
                ranker=tuple(tensors[f"{_RANKER}{k}"] for k in range(ranker)) or None,
                identity=_identity(manifest.get("identity")),
                item_index=tensors.get(_INDEX),
            )
        except KeyError as error:
            raise BundleError(f"{source}: bundle lacks {error}") from None
        except (BundleError, ValueError) as error:
            raise BundleError(f"{source}: {error}") from None


def latest_release(folder: str | os.PathLike[str]) -> Path | None:
    """The newest release file in a releases ``folder``, by its ``latest`` pointer (a file
    holding the release file's name); ``None`` when the folder has no pointer.

    Raises:
        BundleError: the pointer names something other than a file in ``folder``.
    """
    pointer = Path(folder) / LATEST_POINTER
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    if not name or Path(name).name != name or name in (".", ".."):
        raise BundleError(f"{pointer}: names {name!r}, not a release file in {folder}")
    return Path(folder) / name


def _identity(raw: Any) -> ReleaseIdentity | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != {"app", "catalog"}:
        raise BundleError(f"identity must be an object of app and catalog, got {raw!r}")
    return ReleaseIdentity(app=raw["app"], catalog=raw["catalog"])


#: safetensors' dtype names, as numpy reads them (little-endian).
_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}  # fmt: skip


def _tensor_views(data: bytes | memoryview) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The arrays of a safetensors buffer as views into it, and its metadata. A writable
    buffer (a copy-on-write memory map: nothing written reaches the file) is viewed as it
    is, a read-only one (``bytes``) through one copy.

    safetensors' own loaders copy every array (``safetensors.numpy.load``) or need a file
    of its format alone (``safe_open``), where a release is wrapped in its signature; so
    this reads the documented layout (a little-endian u64 header length, a JSON header
    naming each tensor's dtype, shape and byte range, then the data) and checks what
    safetensors checks: known dtypes, a byte range that matches the shape, ranges in
    order, adjacent and covering the data exactly.
    """
    view = memoryview(data).cast("B")
    if view.readonly:  # models may hand arrays to torch, which wants them writable
        view = memoryview(bytearray(view))
    if len(view) < 8:
        raise ValueError("shorter than a safetensors header")
    (length,) = struct.unpack("<Q", view[:8])
    if length > len(view) - 8:
        raise ValueError("header longer than the file")
    header = json.loads(bytes(view[8 : 8 + length]))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    start, end = 8 + length, 8 + length
    tensors: dict[str, np.ndarray] = {}
    entries = sorted(header.items(), key=lambda item: item[1]["data_offsets"][0])
    for name, entry in entries:
        dtype = np.dtype(_DTYPES[entry["dtype"]])
        shape = tuple(int(d) for d in entry["shape"])
        begin, stop = (start + int(o) for o in entry["data_offsets"])
        if any(d < 0 for d in shape) or begin != end or stop > len(view):
            raise ValueError(f"tensor {name!r}: byte range out of order or beyond the file")
        count = math.prod(shape)
        if stop - begin != count * dtype.itemsize:
            raise ValueError(f"tensor {name!r}: {stop - begin} bytes for shape {shape}")
        array = np.frombuffer(view, dtype, count, begin) if count else np.zeros(0, dtype)
        tensors[name], end = array.reshape(shape), stop
    if end != len(view):
        raise ValueError(f"{len(view) - end} bytes after the last tensor")
    return tensors, metadata
