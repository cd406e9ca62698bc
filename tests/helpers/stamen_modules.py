"""Every module of the installed ``stamen`` packages, imported (shared by the tests of the
error tree and of the exported names)."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import tomllib
from types import ModuleType

from helpers.paths import ROOT


def packages() -> list[str]:
    """The packages pyproject.toml installs (``tests/test_layering.py`` checks the list is
    complete)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return sorted(config["tool"]["setuptools"]["packages"])


def module_names() -> list[str]:
    """Every package and module of every installed package, sorted. A package that does not
    import fails here, loudly: nothing is skipped."""
    names: set[str] = set()
    for package in packages():
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.submodule_search_locations is not None, package
        names.add(package)
        for info in pkgutil.iter_modules(spec.submodule_search_locations, f"{package}."):
            names.add(info.name)
    return sorted(names)


def all_modules() -> list[ModuleType]:
    """Every module of :func:`module_names`, imported."""
    return [importlib.import_module(name) for name in module_names()]
