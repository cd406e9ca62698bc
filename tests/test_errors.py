"""One exception tree: every error Stamen defines is a ``StamenError``, the tree drawn in
``stamen.errors``' docstring is the real one, and an app catches everything from
``stamen.client``."""

from __future__ import annotations

import inspect
import re

import pytest
from helpers.stamen_modules import all_modules

import stamen.client
import stamen.errors
from stamen.errors import StamenError

#: What an app embedding the device (or running a SuperNode) may need to catch.
APP_ERRORS = [
    "BundleError",
    "ConfigError",
    "DataError",
    "DecryptionError",
    "DeviceClosedError",
    "EventError",
    "PrivacyError",
    "ReleaseError",
    "RollbackError",
    "SecureAggregationRequired",
    "SignatureError",
    "StamenError",
]

#: Builtin co-bases that keep generic handlers working.
BUILTIN_BASES = {
    "DataError": ValueError,
    "ConfigError": ValueError,
    "CertificateError": ValueError,
    "CertificateExistsError": FileExistsError,
    "SecureAggregationRequired": RuntimeError,
}


def test_every_exception_defined_in_stamen_is_a_stamen_error() -> None:
    strays = []
    for module in all_modules():
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
                and not issubclass(value, StamenError)
            ):
                strays.append(f"{module.__name__}.{name}")
    assert not strays, f"not StamenError subclasses: {strays}"


def test_every_error_class_lives_in_stamen_errors() -> None:
    elsewhere = [
        f"{module.__name__}.{name}"
        for module in all_modules()
        if module is not stamen.errors
        for name, value in vars(module).items()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == module.__name__
    ]
    assert not elsewhere, f"define errors in stamen.errors: {elsewhere}"


def test_the_drawn_tree_is_the_real_one() -> None:
    doc = stamen.errors.__doc__ or ""
    # "    └── Name (Builtin)": a child's marker sits in its parent's name column
    entry = re.compile(r"^(?P<lead>[ │]*)(?:[├└]── )?(?P<name>[A-Z]\w+)(?: \((?P<co>[\w, ]+)\))?")
    columns: dict[int, str] = {}
    drawn: dict[str, tuple[str, list[str]]] = {}
    lines = doc.split("\n\n")[1].splitlines()
    for line in lines:
        match = entry.match(line)
        if match is None or ("──" not in line and match["name"] != "Exception"):
            continue  # a continuation line of a long entry
        column = match.start("name")
        columns = {c: n for c, n in columns.items() if c < column}
        columns[column] = match["name"]
        if match["name"] != "Exception":
            parent = columns[len(match["lead"])]
            drawn[match["name"]] = (parent, (match["co"] or "").replace(" ", "").split(","))
    assert sorted(drawn) == sorted(stamen.errors.__all__)
    for name, (parent, co_bases) in drawn.items():
        cls = getattr(stamen.errors, name)
        assert cls.__bases__[0].__name__ == parent, name
        assert [b.__name__ for b in cls.__bases__[1:]] == [c for c in co_bases if c], name


@pytest.mark.parametrize("name", sorted(BUILTIN_BASES))
def test_builtin_co_bases_are_kept(name: str) -> None:
    cls = getattr(stamen.errors, name)
    assert issubclass(cls, StamenError) and issubclass(cls, BUILTIN_BASES[name])


def test_privacy_errors_are_stamen_errors() -> None:
    from stamen.privacy import BudgetExceededError, DecryptionError, PrivacyError, SignatureError

    for cls in (BudgetExceededError, DecryptionError, SignatureError):
        assert issubclass(cls, PrivacyError) and issubclass(cls, StamenError)


@pytest.mark.parametrize("name", APP_ERRORS)
def test_an_app_catches_every_error_from_stamen_client(name: str) -> None:
    assert name in stamen.client.__all__
    assert getattr(stamen.client, name) is getattr(stamen.errors, name)
