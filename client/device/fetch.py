"""Fetching the newest release from a releases folder served over HTTP(S).

A publisher's releases folder (``release-NNNNNN.stamen`` files and a ``latest`` pointer
naming the newest) can be served by any static web server. :func:`fetch_newest` reads
``<url>/latest``, skips the download when the name says the release is not newer than
the device's, and reads the file, bounded in size and time. The bytes are verified by
the device like any release (its signature, its identity, newer than every release
installed), so the transport adds no trust: HTTPS keeps the release's contents and the
device's interest private on the way.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from stamen.errors import ReleaseError

if TYPE_CHECKING:  # urllib.request and ssl load when a release is fetched, not with Device
    import ssl

__all__ = ["MAX_RELEASE_BYTES", "fetch_newest", "is_url"]

#: The largest release file :func:`fetch_newest` reads (a 1,000,000-item float32 table at
#: 64 dimensions is about 260 MB; the catalogue comes with it).
MAX_RELEASE_BYTES = 2 * 1024**3
_NUMBERED = re.compile(r"^release-(\d+)\.stamen$")


def is_url(source: object) -> bool:
    """Whether ``source`` is an ``http://`` or ``https://`` URL (a string)."""
    return isinstance(source, str) and urlsplit(source).scheme in ("http", "https")


def fetch_newest(
    url: str,
    *,
    newer_than: int,
    timeout: float = 30.0,
    max_bytes: int = MAX_RELEASE_BYTES,
    context: ssl.SSLContext | None = None,
) -> tuple[str, bytes] | None:
    """The name and bytes of the newest release in the releases folder at ``url``, or
    ``None`` when its ``latest`` pointer names a release numbered ``newer_than`` or lower.

    Raises:
        ReleaseError: the server cannot be reached, answers with an error, names no
            release file, or sends more than ``max_bytes``.
    """
    base = url if url.endswith("/") else url + "/"
    name = _read(urljoin(base, "latest"), timeout, 256, context).decode("utf-8", "replace")
    name = name.strip()
    if not name or "/" in name or name in (".", ".."):
        raise ReleaseError(f"{base}latest: names {name!r}, not a release file")
    numbered = _NUMBERED.match(name)
    if numbered is not None and int(numbered[1]) <= newer_than:
        return None
    return name, _read(urljoin(base, name), timeout, max_bytes, context)


def _read(url: str, timeout: float, limit: int, context: ssl.SSLContext | None) -> bytes:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:  # noqa: S310
            data = response.read(limit + 1)
    except urllib.error.HTTPError as error:
        raise ReleaseError(f"{url}: the server answered {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ReleaseError(f"{url}: cannot fetch ({reason})") from None
    if len(data) > limit:
        raise ReleaseError(f"{url}: more than {limit} bytes; not read")
    return data
