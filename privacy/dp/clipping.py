"""Clipping and range checks of model updates: the innermost privacy step.

Clipping bounds each device's influence on the aggregate (the sensitivity that DP-FedAvg
noise is calibrated to); :func:`check_update` rejects out-of-range or non-finite updates
before they are masked for secure aggregation, where the server can no longer see them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stamen.errors import UpdateBoundError

__all__ = ["check_update", "clip_update", "update_norm"]

_MAX_SHRINK_STEPS = 200


def update_norm(arrays: Sequence[np.ndarray]) -> float:
    """Global L2 norm over all ``arrays`` together, accumulated in float64.

    Non-finite entries give a non-finite result (``nan`` or ``inf``); an empty list has
    norm 0.
    """
    total = 0.0
    for array in arrays:
        flat = np.asarray(array, dtype=np.float64).ravel()
        total += float(np.dot(flat, flat))
    return float(np.sqrt(total))


def clip_update(arrays: Sequence[np.ndarray], *, max_norm: float) -> tuple[list[np.ndarray], float]:
    """Scale ``arrays`` by ``min(1, max_norm / norm)`` and return them with the original norm.

    The returned arrays are new (never views of the inputs) and keep each input's
    floating dtype. The clipped global norm, as :func:`update_norm` measures it, is
    guaranteed not to exceed ``max_norm`` even after rounding to a low-precision dtype;
    an update already within ``max_norm`` comes back unchanged.

    Raises:
        ValueError: ``max_norm`` is not a positive finite number, or the update holds
            non-finite values.
        TypeError: an array is not of a floating dtype.
    """
    if not (np.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"max_norm must be a positive finite number (got {max_norm!r})")
    arrays = [np.asarray(array) for array in arrays]
    for index, array in enumerate(arrays):
        if not np.issubdtype(array.dtype, np.floating):
            raise TypeError(f"array {index} has dtype {array.dtype}; clipping needs floats")
    norm = update_norm(arrays)
    if not np.isfinite(norm):
        raise ValueError("cannot clip an update that holds non-finite values")
    if norm <= max_norm:
        return [array.copy() for array in arrays], norm

    scale = max_norm / norm
    # Rounding to the arrays' dtype may push the norm a hair above max_norm: shrink the
    # scale until the bound holds exactly (almost always zero or one extra step).
    # The product is formed in float64 (a float16 array would otherwise round the scale
    # itself to float16) and written straight into an array of the input's dtype.
    shrink = max(float(np.finfo(array.dtype).eps) for array in arrays)
    for _ in range(_MAX_SHRINK_STEPS):
        clipped = [
            np.multiply(array, scale, out=np.empty_like(array), dtype=np.float64, casting="unsafe")
            for array in arrays
        ]
        if update_norm(clipped) <= max_norm:
            return clipped, norm
        scale *= 1 - shrink
        shrink = min(2 * shrink, 0.5)
    return [np.zeros_like(array) for array in arrays], norm  # pragma: no cover


def check_update(
    arrays: Sequence[np.ndarray],
    *,
    expected_shapes: Sequence[tuple[int, ...]],
    bound: float,
) -> float:
    """Reject an update that is malformed, non-finite or larger than ``bound``; return its norm.

    Run this on every incoming update before it is masked: once masked, a malicious or
    broken device's values can no longer be told apart from honest ones.

    Raises:
        ValueError: the number of arrays or any shape differs from ``expected_shapes``,
            or an array holds NaN or infinity. The message names the offending array.
        UpdateBoundError: the global L2 norm exceeds ``bound`` (a ``ValueError`` too).
    """
    if len(arrays) != len(expected_shapes):
        raise ValueError(f"update has {len(arrays)} arrays, expected {len(expected_shapes)}")
    for index, (array, shape) in enumerate(zip(arrays, expected_shapes, strict=True)):
        array = np.asarray(array)
        if array.shape != tuple(shape):
            raise ValueError(f"array {index} has shape {array.shape}, expected {tuple(shape)}")
        if not np.issubdtype(array.dtype, np.number) or np.issubdtype(
            array.dtype, np.complexfloating
        ):
            raise ValueError(f"array {index} has non-real dtype {array.dtype}")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"array {index} holds non-finite values (NaN or infinity)")
    norm = update_norm(arrays)
    if norm > bound:
        raise UpdateBoundError(f"update norm {norm:.6g} exceeds the bound {bound:.6g}")
    return norm
