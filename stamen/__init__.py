"""Stamen: a privacy-preserving, federated, on-device recommender.

Subpackages, bottom layer first: ``stamen.models``, ``stamen.privacy``, ``stamen.client``,
``stamen.server`` and ``stamen.simulation``.
"""

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["__version__", "lazy_attributes"]

__version__ = "0.1.0"


def lazy_attributes(package: str, lazy: Mapping[str, Sequence[str]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) for ``package`` that imports each name of
    ``lazy`` (module -> names) on first use, so importing the package does not load what
    only some callers need (Flower, Opacus)."""
    where = {name: module for module, names in lazy.items() for name in names}
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        namespace[name] = value
        return value

    return __getattr__
