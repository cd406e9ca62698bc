"""Settings classes that validate without pydantic: what the device's serving path reads.

Importing pydantic and building its validators costs an embedded app about a third of its
start-up (issue 26's footprint), so the settings a device needs to serve a release (MF's
device step, the recommendation pipeline's) are frozen standard dataclasses deriving from
:class:`DataclassSettings`. Each field states its bounds in its ``metadata`` with
pydantic's names (``gt``, ``ge``, ``lt``, ``le``, ``description``), so one declaration
serves both sides:

- on the device, constructing the class checks every field's type and bounds and raises
  :class:`~stamen.errors.ConfigError` naming every problem at once;
- where such a class is a field of a pydantic model (``ServerSettings.local``), pydantic
  reads the same ``metadata``, validates the field itself and forbids unknown keys.

The class offers the part of pydantic's ``BaseModel`` interface that Stamen's code uses
(``model_validate``, ``model_dump``, ``model_copy``, ``model_fields``), so that a model
family's settings class may be either kind (``stamen.models.registry``).

Supported annotations: ``int``, ``float``, ``bool``, ``str``, ``Literal[...]``,
``dict[str, int]``, ``dict[str, float]`` and any of them ``| None``. An ``int`` is accepted
where a ``float`` is declared (and stored as ``float``), an integral ``float`` where an
``int`` is (numpy scalars too); a ``bool`` is never taken for a number.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, Self

from stamen.errors import ConfigError

__all__ = ["DataclassSettings", "SettingsField"]

#: The bounds a field's ``metadata`` may state, as pydantic names them.
_BOUNDS: dict[str, tuple[Callable[[Any, Any], bool], str]] = {
    "gt": (operator.gt, ">"),
    "ge": (operator.ge, ">="),
    "lt": (operator.lt, "<"),
    "le": (operator.le, "<="),
}
_MISSING = object()


@dataclasses.dataclass(frozen=True)
class SettingsField:
    """One field as ``model_fields`` describes it, with the attributes of pydantic's
    ``FieldInfo`` that Stamen reads (``annotation``, ``default``, ``description``)."""

    annotation: Any
    default: Any
    description: str | None
    metadata: Mapping[str, Any]


class _Fields:
    """``model_fields`` on the class: its fields by name, in declaration order."""

    def __get__(self, instance: object, owner: type) -> dict[str, SettingsField]:
        if not dataclasses.is_dataclass(owner):  # read while the class is being made
            return {}
        hints = _hints(owner)
        return {
            f.name: SettingsField(
                annotation=hints[f.name],
                default=f.default_factory()
                if f.default_factory is not dataclasses.MISSING
                else f.default,
                description=f.metadata.get("description"),
                metadata=f.metadata,
            )
            for f in dataclasses.fields(owner)
        }


@dataclasses.dataclass(frozen=True)
class DataclassSettings:
    """Base of frozen settings dataclasses checked on construction (module docstring)."""

    #: Unknown keys are an error where pydantic validates a subclass, too.
    __pydantic_config__: ClassVar[dict[str, str]] = {"extra": "forbid"}
    #: The fields by name (pydantic's ``BaseModel.model_fields``).
    model_fields: ClassVar[_Fields] = _Fields()

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        problems = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            try:
                checked = _convert(value, hints[f.name])
                _check_bounds(checked, f.metadata)
            except ValueError as problem:
                problems.append(f"{f.name}: {problem} (got {value!r})")
                continue
            if checked is not value:
                object.__setattr__(self, f.name, checked)
        problems.extend(self._problems())
        if problems:
            raise ConfigError(f"{type(self).__name__}: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        """Problems that involve more than one field's type and bounds (a subclass adds
        its own)."""
        return []

    @classmethod
    def model_validate(cls, values: Mapping[str, Any] | Self) -> Self:
        """The settings ``values`` holds (an instance is returned as it is).

        Raises:
            ConfigError: an unknown key, or a value of the wrong type or out of bounds
                (every problem named).
        """
        if isinstance(values, cls):
            return values
        if not isinstance(values, Mapping):
            raise ConfigError(f"{cls.__name__} takes a mapping, got {type(values).__name__}")
        unknown = sorted(set(values) - set(cls.model_fields))
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown settings {unknown}; known: {sorted(cls.model_fields)}"
            )
        return cls(**values)

    def model_dump(self, *, include: set[str] | None = None) -> dict[str, Any]:
        """The fields as a plain dict (``include``: only those names)."""
        return {
            f.name: _copied(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if include is None or f.name in include
        }

    def model_copy(self, *, update: Mapping[str, Any] | None = None) -> Self:
        """A copy with ``update``'s fields replaced (and checked again)."""
        return self.model_validate({**self.model_dump(), **(update or {})})


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of ``cls``' fields (cached per class)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _copied(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else value


def _convert(value: Any, hint: Any) -> Any:
    """``value`` as the annotation ``hint`` declares it; ``ValueError`` when it is not."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"must be one of {list(args)}")
        return value
    if origin is dict:
        key_type, value_type = args
        if not isinstance(value, Mapping):
            raise ValueError("must be a mapping")
        out = {}
        for key, item in value.items():
            if not isinstance(key, str) or key_type is not str:
                raise ValueError(f"keys must be strings, not {key!r}")
            try:
                out[key] = _convert(item, value_type)
            except ValueError as problem:
                raise ValueError(f"[{key!r}] {problem}") from None
        return out
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError("must be an integer")
        if isinstance(value, numbers.Integral):
            return value if type(value) is int else int(value)
        if not float(value).is_integer():
            raise ValueError("must be an integer")
        return int(float(value))
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError("must be a number")
        if math.isnan(value):
            raise ValueError("must be a number, not NaN")
        return value if type(value) is float else float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError("must be a string")
        return value
    raise TypeError(f"DataclassSettings does not support the annotation {hint!r}")


def _check_bounds(value: Any, metadata: Mapping[str, Any]) -> None:
    """``ValueError`` when ``value`` (or, for a mapping, any of its values) is outside the
    bounds ``metadata`` states; ``None`` is outside none."""
    values = value.values() if isinstance(value, dict) else [value]
    for name, (holds, symbol) in _BOUNDS.items():
        bound = metadata.get(name, _MISSING)
        if bound is _MISSING:
            continue
        for v in values:
            if v is not None and not holds(v, bound):
                raise ValueError(f"must be {symbol} {bound}")
