"""Settings as users write them, parsed once into the pydantic models.

Every source of settings names a field by its path in the models (``secagg.num_shares``)
in its own spelling:

- a flat run config (Flower's ``[tool.flwr.app.config]``, ``flwr run --run-config``): the
  kebab-case key :func:`run_config_key` derives from the path (``secagg-num-shares``;
  ``analytics.trending.every`` is ``trending-every``; :data:`ALIASES` holds the few
  historical names, ``num-server-rounds`` for ``rounds``);
- a TOML file or a nested dict: tables and keys as the models nest them, in kebab or snake
  case (``[secagg]`` ``num-shares``);
- a command-line flag (``stamen.simulation.cli.options``): a path and a typer option.

:func:`validate` merges the sources (later ones win) into one model and raises one
:class:`~stamen.errors.ConfigError` that lists every problem found, each named as the user
wrote it: unknown keys, bad values and inconsistent settings alike.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard, TypeVar

from pydantic import BaseModel, ValidationError

from stamen.dataclass_settings import DataclassSettings
from stamen.errors import ConfigError

__all__ = [
    "ALIASES",
    "Given",
    "read_run_config",
    "run_config_key",
    "run_config_keys",
    "validate",
]

M = TypeVar("M", bound=BaseModel)

#: Run-config names that are not the field path in kebab case. A field's entry is its key;
#: a section's entry is the prefix of its fields' keys ("": none).
ALIASES: dict[str, str] = {
    "rounds": "num-server-rounds",
    "secagg.enabled": "secure-aggregation",
    "dp.mode": "dp",
    "dp.target_epsilon": "dp-epsilon",
    "analytics": "",
    "analytics.trending.dp": "trending",
    "analytics.trending.dp.mode": "trending-dp",
    "analytics.trending.dp.target_epsilon": "trending-epsilon",
    "analytics.evaluation.dp": "evaluation",
    "analytics.evaluation.dp.mode": "evaluation-dp",
    "analytics.evaluation.dp.target_epsilon": "evaluation-epsilon",
    "analytics.experiments": "experiment",
    "analytics.experiments.dp": "experiment",
    "analytics.experiments.dp.mode": "experiment-dp",
    "analytics.experiments.dp.target_epsilon": "experiment-epsilon",
}


def run_config_key(path: str) -> str:
    """The flat run-config key of the field at dotted ``path`` (see :data:`ALIASES`)."""
    if path in ALIASES:
        return ALIASES[path]
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        section = ".".join(parts[:cut])
        if section in ALIASES:
            parts = [ALIASES[section], *parts[cut:]]
            break
    return "-".join(part for part in parts if part).replace("_", "-")


def _leaves(model: type[Any], prefix: str = "") -> Iterator[str]:
    for name, info in model.model_fields.items():
        kind = info.annotation
        if _is_section(kind):
            yield from _leaves(kind, f"{prefix}{name}.")
        else:
            yield prefix + name


def _is_section(kind: object) -> TypeGuard[type[Any]]:
    """Whether a field of this annotation is a section of settings (a pydantic model, or a
    ``DataclassSettings``: MF's device step) rather than one value."""
    return isinstance(kind, type) and issubclass(kind, BaseModel | DataclassSettings)


def _under(path: str, sections: Collection[str]) -> bool:
    return any(path == s or path.startswith(s + ".") for s in sections)


def run_config_keys(model: type[BaseModel], *, exclude: Collection[str] = ()) -> dict[str, str]:
    """Run-config key -> dotted field path, for every field of ``model`` but those at or
    below the paths in ``exclude``."""
    keys: dict[str, str] = {}
    for path in _leaves(model):
        if _under(path, exclude):
            continue
        key = run_config_key(path)
        if key in keys:
            raise TypeError(f"run-config key {key!r} would name {keys[key]} and {path}")
        keys[key] = path
    return keys


@dataclass(frozen=True)
class Given:
    """Settings from one source: ``data`` nested as the models are (snake_case names),
    ``names`` each given dotted path as the user spelled it, ``spelling`` how to name a path
    the source did not give (its run-config key or flag), ``problems`` found on reading."""

    source: str
    data: dict[str, Any]
    names: dict[str, str] = field(default_factory=dict)
    spelling: Mapping[str, str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    @classmethod
    def nested(cls, data: Mapping[str, Any], *, source: str) -> Given:
        """A TOML file's or a dict's settings, keys in kebab or snake case; ``None`` at the
        top level: unset."""
        names: dict[str, str] = {}

        def walk(node: Mapping[str, Any], path: str, spelled: str) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for key, value in node.items():
                name, written = str(key).replace("-", "_"), f"{spelled}{key}"
                names[path + name] = written
                out[name] = (
                    walk(value, f"{path}{name}.", f"{written}.")
                    if isinstance(value, dict)
                    else value
                )
            return out

        top = {k: v for k, v in data.items() if v is not None}
        return cls(source, walk(top, "", ""), names)

    @classmethod
    def flat(
        cls,
        values: Mapping[str, Any],
        names: Mapping[str, str],
        *,
        source: str,
        spelling: Mapping[str, str] | None = None,
        problems: Collection[str] = (),
    ) -> Given:
        """Settings by dotted field path (``{"secagg.num_shares": 3}``), each spelled as
        ``names`` says."""
        data: dict[str, Any] = {}
        for path, value in values.items():
            *sections, leaf = path.split(".")
            node = data
            for section in sections:
                node = node.setdefault(section, {})
            node[leaf] = value
        return cls(source, data, dict(names), spelling or names, tuple(problems))

    def only(self, fields: Collection[str]) -> Given:
        """These settings restricted to the top-level ``fields``."""
        return Given(
            self.source,
            {k: v for k, v in self.data.items() if k in fields},
            {p: n for p, n in self.names.items() if p.split(".")[0] in fields},
            self.spelling,
        )

    def given_under(self, section: str) -> list[str]:
        """The names of the settings given at or below dotted ``section``."""
        return sorted(n for p, n in self.names.items() if _under(p, [section]))

    def gave(self, path: str) -> bool:
        """Whether this source sets ``path``, something below it, or a section above it."""
        node: Any = self.data
        for part in path.split(".") if path else ():
            if not isinstance(node, dict):
                return True
            if part not in node:
                return False
            node = node[part]
        return True

    def name(self, path: str) -> str:
        """``path`` as this source spells it."""
        if path in self.names:
            return self.names[path]
        below = self.given_under(path)
        if below:
            return ", ".join(below)
        return self.spelling.get(path, path.replace("_", "-"))


def read_run_config(
    run_config: Mapping[str, Any], keys: Mapping[str, str], *, source: str
) -> Given:
    """A flat run config's settings: ``keys`` maps each known key to its field path; an
    empty value (or ``None``) keeps the default; an unknown key is a problem."""
    values: dict[str, Any] = {}
    names: dict[str, str] = {}
    problems = []
    for key, value in run_config.items():
        if key not in keys:
            problems.append(f"{source}: {key}: unknown key{_hint(key, keys)}")
        elif value is not None and value != "":
            values[keys[key]] = value
            names[keys[key]] = key
    spelling = {path: key for key, path in keys.items()}
    return Given.flat(values, names, source=source, spelling=spelling, problems=problems)


def validate(
    model: type[M],
    *sources: Given,
    defaults: Mapping[str, Any] | None = None,
    problems: Collection[str] = (),
) -> M:
    """``model`` from ``defaults`` (nested, not the user's), then ``sources``, later ones
    winning. Raises one ConfigError that lists ``problems``, those the sources found on
    reading and every validation error, each named by the source that gave the setting, as
    it spelled it."""
    found = [*problems, *(p for s in sources for p in s.problems)]
    data = dict(defaults or {})
    for given in sources:
        data = _merge(data, given.data)
    try:
        result = model.model_validate(data)
    except ValidationError as error:
        found += [_problem(model, e, sources) for e in error.errors()]
    if found:
        raise ConfigError(
            found[0] if len(found) == 1 else f"{len(found)} problems:\n  " + "\n  ".join(found)
        )
    return result


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _problem(model: type[BaseModel], error: Any, sources: tuple[Given, ...]) -> str:
    loc = [str(part) for part in error["loc"]]
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key" + _hint(loc[-1], _fields(model, loc[:-1]))
    for cut in range(len(loc), 0, -1):
        path = ".".join(loc[:cut])
        for given in reversed(sources):
            if given.gave(path):
                return f"{given.source}: {given.name(path)}: {message}"
    path = ".".join(loc)
    if path:  # a setting no source gave (a required one): named as the last source would
        for given in reversed(sources):
            if path in given.spelling:
                return f"{given.source}: {given.spelling[path]}: {message}"
    where = ", ".join(s.source for s in sources if s.data) or ", ".join(s.source for s in sources)
    return f"{where or 'settings'}: {path + ': ' if path else ''}{message}"


def _fields(model: type[Any], path: list[str]) -> list[str]:
    """The kebab-case field names of the section of ``model`` at ``path``."""
    for part in path:
        info = model.model_fields.get(part)
        kind = None if info is None else info.annotation
        if not _is_section(kind):
            return []
        model = kind
    return [name.replace("_", "-") for name in model.model_fields]


def _hint(key: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(key.replace("_", "-"), list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
