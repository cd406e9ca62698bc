"""Stamen: a privacy-preserving, federated, on-device recommender.

Subpackages, bottom layer first: ``stamen.models``, ``stamen.privacy``, ``stamen.client``,
``stamen.server`` and ``stamen.simulation``.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
