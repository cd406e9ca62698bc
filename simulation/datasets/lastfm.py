"""Loader for HetRec 2011 Last.fm-2K (GroupLens, https://grouplens.org/datasets/hetrec-2011/).

``user_artists.dat`` holds ``userID artistID weight`` (tab-separated, with a header), the
weight being the user's play count of the artist; ``artists.dat`` holds ``id name url
pictureURL``. The data set has no interaction times, so ``timestamp`` is ``None`` (the
split then holds out at random). Tags are not loaded: genres are empty, years 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stamen.models.errors import DataFormatError
from stamen.models.schema import Catalog, Dataset
from stamen.simulation.datasets.parsing import (
    Column,
    TableFormat,
    parse_int,
    read_interactions,
    require_dir,
    require_file,
    text_lines,
)

__all__ = [
    "load_lastfm_2k",
]

_USER_ARTISTS = TableFormat(
    sep="\t",
    header=("userID", "artistID", "weight"),
    columns=(Column("userID", low=0), Column("artistID", low=0), Column("weight", low=1)),
    timestamp=None,
)
_ARTIST_FIELDS = ("id", "name", "url", "pictureURL")
_ARTIST_HEADER = "\t".join(_ARTIST_FIELDS)


def _read_artists(path: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    # Artist names hold every script and a few stray bytes: decode leniently (U+FFFD),
    # but a line must still have exactly four tab-separated fields.
    lines = text_lines(path, "utf-8-replace")
    header = next(lines, None)
    if header is None or tuple(header[1].split("\t")) != _ARTIST_FIELDS:
        raise DataFormatError(
            f"expected the header {_ARTIST_HEADER!r}, "
            f"found {None if header is None else header[1]!r}",
            path=path,
            line=1 if header is None else header[0],
            field="header",
        )
    ids: list[int] = []
    names: list[str] = []
    seen: dict[int, int] = {}
    for number, line in lines:
        fields = line.split("\t")
        if len(fields) != len(_ARTIST_FIELDS):
            raise DataFormatError(
                f"found {len(fields)} fields, expected 4 tab-separated ({_ARTIST_HEADER!r})",
                path=path,
                line=number,
                field=_ARTIST_FIELDS[min(len(fields), len(_ARTIST_FIELDS) - 1)],
            )
        artist = parse_int(fields[0], path=path, line=number, field="id")
        if artist in seen:
            raise DataFormatError(
                f"id {artist} repeats the one on line {seen[artist]}",
                path=path,
                line=number,
                field="id",
            )
        seen[artist] = number
        ids.append(artist)
        names.append(fields[1])
    if not ids:
        raise DataFormatError("no artists listed", path=path)
    return np.asarray(ids, dtype=np.int64), tuple(names)


def load_lastfm_2k(path: str | Path) -> Dataset:
    """Load HetRec Last.fm-2K from the folder holding ``user_artists.dat`` and
    ``artists.dat``: one row per (user, artist) with the play count as value and no
    timestamps; the catalogue is ``artists.dat`` in file order (names as titles)."""
    folder = require_dir(path, "the extracted hetrec2011-lastfm-2k folder (with user_artists.dat)")
    plays = require_file(
        folder / "user_artists.dat", "Last.fm-2K play counts (userID, artistID, weight)"
    )
    artists = require_file(folder / "artists.dat", "Last.fm-2K artist list (id, name, url, ...)")
    item_ids, names = _read_artists(artists)
    interactions = read_interactions(plays, _USER_ARTISTS, item_ids=item_ids, catalog_path=artists)
    catalog = Catalog(
        item_ids=item_ids,
        titles=names,
        genres=((),) * len(item_ids),
        year=np.zeros(len(item_ids), dtype=np.int64),
        first_seen=None,
    )
    return Dataset(name="lastfm-2k", interactions=interactions, catalog=catalog)
