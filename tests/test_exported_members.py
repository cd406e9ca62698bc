"""Every public module's ``__all__`` is complete, not only sorted (httpx's
``tests/test_exported_members.py``): a package exports everything its ``__init__`` binds or
loads lazily, and a module lists exactly the public names it defines."""

from __future__ import annotations

import ast
import importlib
import inspect
from types import ModuleType

import pytest
from helpers.stamen_modules import module_names, packages

import stamen

#: Gaps in files this change could not touch: each entry must still be a gap (the test
#: below fails once it is fixed, so that the entry goes too).

PUBLIC = [name for name in module_names() if not any(p.startswith("_") for p in name.split("."))]
PACKAGES = [name for name in PUBLIC if name in packages()]
MODULES = [name for name in PUBLIC if name not in packages()]


def _module(name: str) -> ModuleType:
    return importlib.import_module(name)


def _bound_at_top(module: ModuleType) -> dict[str, str]:
    """Names a module's source binds at its top level, each with how: ``import`` (of
    another library), ``stamen`` (imported from a Stamen module), ``def`` or ``assign``."""
    tree = ast.parse(inspect.getsource(module))
    bound: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                bound[(alias.asname or alias.name).split(".")[0]] = "import"
        elif isinstance(node, ast.ImportFrom):
            home = node.module or ""
            how = "stamen" if home.split(".")[0] == "stamen" or node.level else "import"
            for alias in node.names:
                bound[alias.asname or alias.name] = how
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound[node.name] = "def"
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    bound[target.id] = "assign"
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            bound[node.target.id] = "assign"
    return bound


def _defined_here(module: ModuleType) -> set[str]:
    """Public classes and functions whose home is this module."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == module.__name__
    }


def _lazy_names(module: ModuleType) -> set[str]:
    lazy = getattr(module, "_LAZY", {})
    return {name for names in lazy.values() for name in names}


def test_public_modules_were_found() -> None:
    assert {"stamen", "stamen.errors", "stamen.client", "stamen.simulation.cli.commands"} <= set(
        PUBLIC
    )


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_module_has_an_all(name: str) -> None:
    module = _module(name)
    assert isinstance(getattr(module, "__all__", None), list), f"{name} has no __all__"
    assert len(set(module.__all__)) == len(module.__all__), f"{name}.__all__ repeats a name"


@pytest.mark.parametrize("name", PACKAGES)
def test_a_package_exports_everything_its_init_binds(name: str) -> None:
    package = _module(name)
    exported = set(package.__all__)
    assert list(package.__all__) == sorted(package.__all__), f"{name}.__all__ is not sorted"
    bound = {n for n, how in _bound_at_top(package).items() if how != "import"}
    public = {
        n
        for n in bound | _lazy_names(package)
        if not n.startswith("_")
        and not inspect.ismodule(getattr(package, n, None))
        # the helper a subpackage makes its lazy ``__getattr__`` with
        and not (n == "lazy_attributes" and package is not stamen)
    }
    missing = public - exported
    assert not missing, f"{name} binds names missing from its __all__: {missing}"
    for n in exported:
        assert hasattr(package, n), f"{name}.__all__ names missing {n!r}"


@pytest.mark.parametrize("name", MODULES)
def test_a_module_all_lists_exactly_what_it_defines(name: str) -> None:
    module = _module(name)
    exported = set(module.__all__)
    assigned = {n for n, how in _bound_at_top(module).items() if how == "assign"}
    missing = _defined_here(module) - exported
    assert not missing, f"{name} defines public names missing from its __all__: {missing}"
    foreign = exported - _defined_here(module) - assigned
    assert not foreign, f"{name}.__all__ lists names it does not define: {foreign}"
