"""Signed releases for the device tests: a model's shared arrays published under a key made
for the test, the small MF release of films that the ``stamen`` command tests use, and the
newest release of a folder, read back."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stamen.models import LocalSettings, ReleaseCatalog
from stamen.models.bundle import ReleaseBundle, ReleaseIdentity, latest_release
from stamen.models.mf.model import MFModel
from stamen.models.registry import RecModel
from stamen.privacy import open_signed, seal_signed
from stamen.server import ReleaseWriter, load_or_create_signing_key

#: The films of :func:`film_release`: ids "1" to "30", titled "Film <id> (1995)".
FILMS = 30


def publish_signed(
    folder: Path, model: RecModel, shared: Sequence[np.ndarray], number: int = 1
) -> tuple[Path, bytes]:
    """Publish ``shared`` as release ``number`` of ``model`` to ``folder/releases``, signed
    with the key pair kept in ``folder/keys``; return the release file and the raw public
    key (also written to ``folder/releases/release.pub``)."""
    private, public = load_or_create_signing_key(folder / "keys" / "release.key")
    writer = ReleaseWriter(folder / "releases", private_key=private, public_key=public, model=model)
    return writer.publish(number, shared), public


def film_release(folder: Path, number: int) -> Path:
    """Release ``number`` of a dimension-4 MF model of the :data:`FILMS` films with seeded
    random item factors, published by :func:`publish_signed`; return the release file."""
    catalog = ReleaseCatalog.build(
        [str(i) for i in range(1, FILMS + 1)],
        titles=[f"Film {i} (1995)" for i in range(1, FILMS + 1)],
    )
    rng = np.random.default_rng(0)
    shared = [rng.normal(0, 0.3, (FILMS, 4)).astype(np.float32), np.zeros(FILMS, np.float32)]
    model = MFModel(LocalSettings(dim=4), catalog)
    return publish_signed(folder, model, shared, number)[0]


def small_mf_release(
    number: int,
    private_key: bytes,
    n: int = 20,
    dim: int = 4,
    *,
    identity: ReleaseIdentity | None = None,
    extras: dict | None = None,
    genres: list[list[str]] | None = None,
) -> bytes:
    """The signed bytes of release ``number`` of an ``ials`` MF model of items
    ``item-0`` … ``item-<n-1>`` (titled ``Title <i>``, with ``genres`` where given), item
    factors seeded by ``number``, published under ``identity`` with the manifest's
    ``extras``."""
    rng = np.random.default_rng(number)
    bundle = ReleaseBundle(
        release=number,
        model="mf",
        settings={"loss": "ials", "dim": dim, "alpha": 1.0, "l2": 2.0},
        arrays={
            "items.weight": rng.normal(0.0, 0.3, (n, dim)).astype(np.float32),
            "items.bias": np.zeros(n, np.float32),
        },
        catalog=ReleaseCatalog.build(
            [f"item-{i}" for i in range(n)],
            titles=[f"Title {i}" for i in range(n)],
            genres=genres,
        ),
        popularity=rng.random(n).astype(np.float32),
        identity=identity,
        extras=extras or {},
    )
    return seal_signed(bundle.encode(), private_key=private_key)


def newest_release(releases: Path, public_key: bytes) -> ReleaseBundle:
    """The newest release in ``releases``, its signature checked against ``public_key``."""
    path = latest_release(releases)
    assert path is not None, f"no release in {releases}"
    return ReleaseBundle.decode(open_signed(path.read_bytes(), public_key=public_key))
