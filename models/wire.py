"""The wire protocol between the server and a device: one typed request per message.

Every training or evaluation message a server sends carries a :class:`Request`: the
:class:`Task` it asks for, the round, the device-side DP (clip norm and noise share), whether
the device may report its training loss, the release signature, and the task's own settings
(the model's device step, the ranker's, private ALS's, an analytics query's). Flower carries
it as a flat config of scalars (:meth:`Request.to_config`); a device decodes it once
(:meth:`Request.from_config`) and dispatches on the task, never on which keys happen to be
present.

    key                 meaning
    task                the Task (its value)
    server-round        the round
    dp-clip-norm        the L2 norm the device clips its upload to (absent: no clipping)
    dp-noise-std        the device's share of the noise (distributed DP; 0: none)
    fit-metrics         whether the device may report its training loss
    release-signature   Ed25519 signature of the arrays sent (absent: unsigned)
    evaluates           for an evaluation sum: the task whose metrics are summed
    (any other key)     the task's settings
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from stamen.errors import ProtocolError

__all__ = [
    "DeviceDP",
    "Request",
    "Scalar",
    "Task",
]

#: A value Flower's config records carry.
Scalar = bool | bytes | float | int | str

_TASK = "task"
_ROUND = "server-round"
_CLIP = "dp-clip-norm"
_NOISE = "dp-noise-std"
_REPORT_LOSS = "fit-metrics"
_SIGNATURE = "release-signature"
_EVALUATES = "evaluates"
_RESERVED = (_TASK, _ROUND, _CLIP, _NOISE, _REPORT_LOSS, _SIGNATURE, _EVALUATES)


class Task(StrEnum):
    """What a request asks a device to do."""

    #: the registered model's device step (training message) or its held-out metrics
    #: (evaluation message)
    MODEL = "model"
    #: the ranker's device step, or its metrics on the device's own offered list
    RANKER = "ranker"
    #: private ALS: the device's item counts
    ALS_COUNTS = "als-counts"
    #: private ALS: the device's statistics for the head items
    ALS_STATISTICS = "als-statistics"
    #: analytics: the device's recent items, counted
    TRENDING = "trending"
    #: analytics: the device's evaluation metrics of ``evaluates``, as a bounded vector
    EVALUATION_SUM = "evaluation-sum"
    #: an A/B experiment's measurement: the device's clipped contribution over a window
    EXPERIMENT = "experiment"
    #: off-policy evaluation of a release's candidate policies: the device's clipped IPS and
    #: SNIPS terms over a window (``stamen.models.off_policy``)
    OFF_POLICY = "off-policy"


@dataclass(frozen=True)
class DeviceDP:
    """User-level DP on the device: clip the whole upload to ``clip_norm``; add a noise
    share of standard deviation ``noise_std`` (distributed mode; 0 in central mode)."""

    clip_norm: float
    noise_std: float = 0.0


@dataclass(frozen=True)
class Request:
    """One message's request (module docstring)."""

    task: Task
    round: int
    settings: Mapping[str, Scalar] = field(default_factory=dict)
    dp: DeviceDP | None = None
    report_loss: bool = False
    signature: bytes | None = None
    evaluates: Task | None = None

    def __post_init__(self) -> None:
        clash = sorted(set(self.settings) & set(_RESERVED))
        if clash:
            raise ProtocolError(f"request settings use reserved keys {clash}")
        if (self.task is Task.EVALUATION_SUM) != (self.evaluates is not None):
            raise ProtocolError("'evaluates' goes with an evaluation-sum request, and only there")

    def with_(self, **changes: Any) -> Request:
        """A copy with ``changes`` (fields, as in ``dataclasses.replace``)."""
        return replace(self, **changes)

    def to_config(self) -> dict[str, Scalar]:
        """The flat config Flower carries."""
        config: dict[str, Scalar] = {_TASK: self.task.value, _ROUND: self.round}
        config.update(self.settings)
        config[_REPORT_LOSS] = self.report_loss
        if self.dp is not None:
            config.update({_CLIP: self.dp.clip_norm, _NOISE: self.dp.noise_std})
        if self.signature is not None:
            config[_SIGNATURE] = self.signature
        if self.evaluates is not None:
            config[_EVALUATES] = self.evaluates.value
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Request:
        """Decode a config; a missing or malformed key raises ``ProtocolError`` naming it."""
        task = _task(config, _TASK)
        try:
            rnd = int(config[_ROUND])
        except KeyError:
            raise ProtocolError(f"request without {_ROUND!r}") from None
        except (TypeError, ValueError):
            raise ProtocolError(f"{_ROUND!r} is not an integer: {config[_ROUND]!r}") from None
        dp = None
        if _CLIP in config:
            dp = DeviceDP(float(config[_CLIP]), float(config.get(_NOISE, 0.0)))
        signature = config.get(_SIGNATURE)
        if signature is not None and not isinstance(signature, bytes):
            raise ProtocolError(f"{_SIGNATURE!r} is not bytes")
        return cls(
            task=task,
            round=rnd,
            settings={k: v for k, v in config.items() if k not in _RESERVED},
            dp=dp,
            report_loss=config.get(_REPORT_LOSS, False) is True,
            signature=signature,
            evaluates=_task(config, _EVALUATES) if _EVALUATES in config else None,
        )


def _task(config: Mapping[str, Any], key: str) -> Task:
    value = config.get(key)
    if value is None:
        raise ProtocolError(f"request without {key!r}")
    try:
        return Task(value)
    except ValueError:
        known = [t.value for t in Task]
        raise ProtocolError(f"{key!r} is {value!r}; known tasks: {known}") from None
