"""Loader for HetRec 2011 Last.fm-2K (GroupLens, https://grouplens.org/datasets/hetrec-2011/).

``user_artists.dat`` holds ``userID artistID weight`` (tab-separated, with a header), the
weight being the user's play count of the artist; ``artists.dat`` holds ``id name url
pictureURL``. The data set has no interaction times, so ``timestamp`` is ``None`` (the
split then holds out at random). Years are 0 (unknown).

Tags are public content (anyone can read an artist's tags on last.fm) and become the
catalogue's genres: ``tags.dat`` (``tagID tagValue``) and ``user_taggedartists.dat``
(``userID artistID tagID day month year``), when both are present, give each artist the
``TAGS_PER_ARTIST`` tags applied to it most often, among the tags applied to at least
``MIN_TAG_ARTISTS`` artists (rarer tags describe too few artists to generalise). Without
those two files the genres are empty.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stamen.errors import DataFormatError
from stamen.models.schema import Catalog, Dataset
from stamen.simulation.datasets import parsing

__all__ = [
    "MIN_TAG_ARTISTS",
    "TAGS_PER_ARTIST",
    "load_lastfm_2k",
]

#: Tags kept per artist (the most applied first).
TAGS_PER_ARTIST = 5
#: Artists a tag must describe to be kept.
MIN_TAG_ARTISTS = 10

_USER_ARTISTS = parsing.TableFormat(
    sep="\t",
    header=("userID", "artistID", "weight"),
    columns=(
        parsing.Column("userID", low=0),
        parsing.Column("artistID", low=0),
        parsing.Column("weight", low=1),
    ),
    timestamp=None,
)
_ARTIST_FIELDS = ("id", "name", "url", "pictureURL")
_ARTIST_HEADER = "\t".join(_ARTIST_FIELDS)


def _read_artists(path: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    # Artist names hold every script and a few stray bytes: decode leniently (U+FFFD),
    # but a line must still have exactly four tab-separated fields.
    lines = parsing.text_lines(path, "utf-8-replace")
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
        layout = f"tab-separated ({_ARTIST_HEADER!r})"
        parsing.check_field_count(fields, _ARTIST_FIELDS, layout, path=path, line=number)
        ids.append(parsing.unique_id(fields[0], seen, path=path, line=number, field="id"))
        names.append(fields[1])
    if not ids:
        raise DataFormatError("no artists listed", path=path)
    return np.asarray(ids, dtype=np.int64), tuple(names)


def _read_tag_names(path: Path) -> dict[int, str]:
    lines = parsing.text_lines(path, "utf-8|latin-1")
    header = next(lines, None)
    if header is None or header[1].split("\t") != ["tagID", "tagValue"]:
        raise DataFormatError("expected the header 'tagID\ttagValue'", path=path, line=1)
    names: dict[int, str] = {}
    for number, line in lines:
        fields = line.split("\t")
        layout = "tab-separated (tagID, tagValue)"
        parsing.check_field_count(
            fields, ("tagID", "tagValue"), layout, path=path, line=number, too_many="tagID"
        )
        names[parsing.parse_int(fields[0], path=path, line=number, field="tagID")] = fields[
            1
        ].strip()
    return names


def _artist_tags(tags: Path, tagged: Path, item_ids: np.ndarray) -> tuple[tuple[str, ...], ...]:
    """Each artist's most applied tags (see module docstring)."""
    names = _read_tag_names(tags)
    lines = parsing.text_lines(tagged, "utf-8")
    next(lines, None)
    row = {int(a): i for i, a in enumerate(item_ids)}
    counts: dict[tuple[int, int], int] = {}
    for number, line in lines:
        fields = line.split("\t")
        if len(fields) != 6:
            raise DataFormatError(
                f"found {len(fields)} fields, expected 6 tab-separated "
                "(userID, artistID, tagID, day, month, year)",
                path=tagged,
                line=number,
            )
        artist = parsing.parse_int(fields[1], path=tagged, line=number, field="artistID")
        tag = parsing.parse_int(fields[2], path=tagged, line=number, field="tagID")
        if tag not in names:
            raise DataFormatError(f"tag {tag} is not in {tags.name}", path=tagged, line=number)
        if artist in row:  # tags of artists outside artists.dat describe nothing here
            counts[(row[artist], tag)] = counts.get((row[artist], tag), 0) + 1
    spread: dict[int, int] = {}
    for _, tag in counts:
        spread[tag] = spread.get(tag, 0) + 1
    per_artist: list[list[tuple[int, str]]] = [[] for _ in item_ids]
    for (artist, tag), n in counts.items():
        if spread[tag] >= MIN_TAG_ARTISTS:
            per_artist[artist].append((-n, names[tag]))
    return tuple(
        tuple(dict.fromkeys(t for _, t in sorted(p)[:TAGS_PER_ARTIST])) for p in per_artist
    )


def load_lastfm_2k(path: str | Path) -> Dataset:
    """Load HetRec Last.fm-2K from the folder holding ``user_artists.dat`` and
    ``artists.dat``: one row per (user, artist) with the play count as value and no
    timestamps; the catalogue is ``artists.dat`` in file order (names as titles)."""
    folder = parsing.require_dir(
        path, "the extracted hetrec2011-lastfm-2k folder (with user_artists.dat)"
    )
    plays = parsing.require_file(
        folder / "user_artists.dat", "Last.fm-2K play counts (userID, artistID, weight)"
    )
    artists = parsing.require_file(
        folder / "artists.dat", "Last.fm-2K artist list (id, name, url, ...)"
    )
    item_ids, names = _read_artists(artists)
    interactions = parsing.read_interactions(
        plays, _USER_ARTISTS, item_ids=item_ids, catalog_path=artists
    )
    genres: tuple[tuple[str, ...], ...] = ((),) * len(item_ids)
    tags, tagged = folder / "tags.dat", folder / "user_taggedartists.dat"
    if tags.is_file() and tagged.is_file():
        genres = _artist_tags(tags, tagged, item_ids)
    catalog = Catalog(
        item_ids=item_ids,
        titles=names,
        genres=genres,
        year=np.zeros(len(item_ids), dtype=np.int64),
        first_seen=None,
    )
    return Dataset(name="lastfm-2k", interactions=interactions, catalog=catalog)
