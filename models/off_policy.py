"""The layout of a device's off-policy evaluation contribution, which the device builds
(``stamen.client.device.off_policy``) and the server reads (``stamen.server.off_policy_stats``):
per person the first moments ``z = [slots, reward, ips_1, weight_1, …, ips_K, weight_K]``
(``d = 2 + 2K``, each in ``[0, 1]``) followed by the upper triangle of ``z zᵀ``; and what the
server reads of the candidate policies a release carries.

A release carries its candidate policies in its manifest's ``extras["candidate_policies"]``
(:data:`CANDIDATES_EXTRA`), a list of ``{"name", "overrides", "max_weight"}``: each a policy
the release ships but no device runs (the pipeline's settings with ``overrides``), and the
clip ``W_c`` of its importance weights. The device validates them in full
(``stamen.client.device.experiments.CandidatePolicy``); the server reads the names and clips
(:func:`candidate_policies`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from stamen.errors import ConfigError

__all__ = [
    "CANDIDATES_EXTRA",
    "DEFAULT_MAX_WEIGHT",
    "candidate_policies",
    "dimension",
    "moment_names",
    "sensitivity",
    "width",
]

#: The key of a release manifest's ``extras`` that holds its candidate policies.
CANDIDATES_EXTRA = "candidate_policies"

#: A candidate's importance-weight clip ``W_c`` when its definition gives none.
DEFAULT_MAX_WEIGHT = 10.0


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


def candidate_policies(extras: Mapping[str, Any]) -> dict[str, float]:
    """The weight clip ``W_c`` of each candidate policy a release's ``extras`` carry, by
    name, in the release's order (what the server needs to ask for and read an off-policy
    evaluation); empty when it carries none.

    Raises:
        ConfigError: not a list of candidates with distinct non-empty names and finite
            ``max_weight`` of at least 1 (every problem named).
    """
    raw = extras.get(CANDIDATES_EXTRA, [])
    if not isinstance(raw, list):
        raise ConfigError(f"extras.{CANDIDATES_EXTRA}: a list, not {type(raw).__name__}")
    found: dict[str, float] = {}
    problems = []
    for k, item in enumerate(raw):
        where = f"extras.{CANDIDATES_EXTRA}.{k}"
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            problems.append(f"{where}: an object with a non-empty string name")
            continue
        weight = item.get("max_weight", DEFAULT_MAX_WEIGHT)
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            problems.append(f"{where}.max_weight: a number, not {weight!r}")
        elif not (math.isfinite(weight) and weight >= 1):
            problems.append(f"{where}.max_weight: must be finite and at least 1 (got {weight})")
        if name in found:
            problems.append(f"{where}: candidate name {name!r} repeats")
        found[name] = float(weight) if isinstance(weight, int | float) else math.nan
    if problems:
        raise ConfigError("; ".join(problems))
    return found
