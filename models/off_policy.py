"""The layout of a device's off-policy evaluation contribution, which the device builds
(``stamen.client.device.off_policy``) and the server reads (``stamen.server.off_policy_stats``):
per person the first moments ``z = [slots, reward, ips_1, weight_1, …, ips_K, weight_K]``
(``d = 2 + 2K``, each in ``[0, 1]``) followed by the upper triangle of ``z zᵀ``.
"""

from __future__ import annotations

import math

__all__ = ["dimension", "moment_names", "sensitivity", "width"]


def dimension(candidates: int) -> int:
    """The number of first moments ``d = 2 + 2K`` of ``candidates`` candidates."""
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise ValueError(f"candidates must be a positive integer (got {candidates!r})")
    return 2 + 2 * candidates


def width(candidates: int) -> int:
    """The length of one person's contribution: ``d + d (d + 1) / 2``."""
    d = dimension(candidates)
    return d + d * (d + 1) // 2


def sensitivity(candidates: int) -> float:
    """The L2 sensitivity of the summed contributions: ``sqrt(width(candidates))``."""
    return math.sqrt(width(candidates))


def moment_names(candidates: int) -> tuple[str, ...]:
    """The first moments' names, in layout order: ``slots``, ``reward``, then ``ips_c`` and
    ``weight_c`` per candidate."""
    names = ["slots", "reward"]
    for c in range(dimension(candidates) // 2 - 1):
        names += [f"ips_{c}", f"weight_{c}"]
    return tuple(names)
