"""The import rules of DESIGN.md, the package list, and every package's ``__all__``.

The root package ``stamen`` and its modules (``stamen.errors``: the one exception tree)
sit below every layer: any layer may import them, and they import no layer and no flwr.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from helpers.paths import ROOT

FOLDERS = {
    "models": "models",
    "privacy": "privacy",
    "client": "client",
    "server": "server",
    "simulation": "simulation",
}
ALLOWED: dict[str, set[str]] = {
    "models": set(),
    "privacy": set(),
    "client": {"models", "privacy"},
    "server": {"models", "privacy"},
    "simulation": {"models", "privacy", "client", "server"},
}
NO_FLWR = {"models", "privacy"}
#: The root package's own modules (``stamen/*.py``), below every layer.
ROOT_MODULES = {path.stem for path in (ROOT / "stamen").glob("*.py")} - {"__init__"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FOLDERS))
def test_layer_imports_only_what_design_allows(layer: str) -> None:
    problems = []
    for path in sorted((ROOT / FOLDERS[layer]).rglob("*.py")):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "stamen" and len(parts) > 1 and parts[1] not in ROOT_MODULES:
                target = parts[1]
                if target != layer and target not in ALLOWED[layer]:
                    problems.append(f"{path.relative_to(ROOT)} imports stamen.{target}")
            if parts[0] in FOLDERS:
                problems.append(f"{path.relative_to(ROOT)} imports top-level {parts[0]!r}")
            if layer in NO_FLWR and parts[0] == "flwr":
                problems.append(f"{path.relative_to(ROOT)} imports flwr")
    assert not problems, "\n".join(problems)


def test_root_modules_import_no_layer_and_no_flwr() -> None:
    assert "errors" in ROOT_MODULES
    problems = []
    for path in sorted((ROOT / "stamen").glob("*.py")):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "stamen" and len(parts) > 1 and parts[1] not in ROOT_MODULES:
                problems.append(f"{path.relative_to(ROOT)} imports stamen.{parts[1]}")
            if parts[0] in FOLDERS or parts[0] in ("flwr", "torch", "opacus", "ray"):
                problems.append(f"{path.relative_to(ROOT)} imports {parts[0]}")
    assert not problems, "\n".join(problems)


def _modules_imported_by(statement: str) -> set[str]:
    """The modules a fresh interpreter imports to run ``statement``."""
    code = (
        f"import sys; before = set(sys.modules); {statement}; "
        "print(sorted(set(sys.modules) - before))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    return set(ast.literal_eval(out))


def test_errors_module_imports_only_the_standard_library() -> None:
    watched = {"stamen", "flwr", "torch", "numpy", "opacus", "ray"}
    imported = _modules_imported_by("import stamen.errors")
    assert {m for m in imported if m.split(".")[0] in watched} == {"stamen", "stamen.errors"}


def test_setuptools_package_list_is_complete() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = config["package-dir"]
    found = {"stamen"}
    for top, folder in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join(["stamen", top, *rel.parts]))
    assert found == listed
    for package in listed:
        assert package in mapping, f"{package} lacks a package-dir entry"
        assert (ROOT / mapping[package] / "__init__.py").is_file()


@pytest.mark.parametrize(
    "package",
    [
        "stamen",
        "stamen.errors",
        *tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"][1:],
    ],
)
def test_all_is_sorted_and_resolves(package: str) -> None:
    module = importlib.import_module(package)
    exported = list(module.__all__)
    assert exported == sorted(exported)
    for name in exported:
        assert hasattr(module, name), f"{package}.__all__ names missing {name!r}"


def test_an_app_embedding_the_device_imports_neither_flower_nor_opacus() -> None:
    imported = _modules_imported_by(
        "from stamen.client import Device, Event; from stamen.privacy import generate_key"
    )
    assert {m.split(".")[0] for m in imported} & {"flwr", "opacus", "ray", "grpc"} == set()
