"""Model arrays and device replies for the tests that drive a device step or a strategy
directly, without Flower's transport."""

from __future__ import annotations

import numpy as np
import torch
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

from stamen.models import MatrixFactorization
from stamen.models.registry import RecModel


def mf_shared(n_items: int, dim: int, seed: int = 0) -> list[np.ndarray]:
    """The shared arrays (item factors, item biases) of a seeded MF model."""
    model = MatrixFactorization(1, n_items, dim, generator=torch.Generator().manual_seed(seed))
    return model.shared_arrays()


def zero_shared(n_items: int, dim: int) -> list[np.ndarray]:
    """MF shared arrays of zeros: item factors ``(n_items, dim)`` and item biases."""
    return [np.zeros((n_items, dim), np.float32), np.zeros(n_items, np.float32)]


def fit_res(arrays: list[np.ndarray]) -> FitRes:
    """A device's successful reply carrying ``arrays`` (one example, no metrics)."""
    return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), 1, {})


def moved_shared(model: RecModel, scale: float, seed: int = 0) -> list[np.ndarray]:
    """``model``'s seeded initial shared arrays moved by Gaussian noise of std ``scale``:
    away from the initial values, where zero id tables and biases are a special point."""
    rng = np.random.default_rng(seed + 1)
    return [a + rng.normal(0, scale, a.shape).astype(np.float32) for a in model.init_shared(seed)]
