"""The batch-first device step of models trained by local SGD on a differentiable loss.

``functional_sgd`` runs ``epochs`` plain SGD steps (with weight decay) of ``loss`` from the
same shared parameters on every device of a batch at once: ``torch.func.vmap`` over the
devices of ``grad`` of one device's loss. Each device's trajectory depends only on its own
inputs, so a device stepped alone (the ClientApp) and inside a cohort batch (the batched
simulation) compute the same update.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch.func import grad_and_value, vmap

__all__ = ["functional_sgd"]

Params = dict[str, torch.Tensor]


def functional_sgd(
    loss: Callable[[Params, Mapping[str, torch.Tensor], int], torch.Tensor],
    params: Params,
    inputs: Mapping[str, torch.Tensor],
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
) -> tuple[Params, torch.Tensor]:
    """Per-device deltas ``{name: (devices, *shape)}`` and losses ``(devices,)``.

    ``loss(params, device_inputs, epoch)`` is one device's loss; ``inputs`` hold the
    devices on their first axis. The loss reported is the one before the first step.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")

    def one(device_inputs: Mapping[str, torch.Tensor]) -> tuple[Params, torch.Tensor]:
        current = params
        first: torch.Tensor | None = None
        for epoch in range(epochs):
            grads, value = grad_and_value(loss)(current, device_inputs, epoch)
            first = value if first is None else first
            if weight_decay:
                grads = {k: grads[k] + weight_decay * current[k] for k in current}
            current = {k: current[k] - lr * grads[k] for k in current}
        assert first is not None  # epochs >= 1
        return {k: current[k] - params[k] for k in current}, first

    return vmap(one)(dict(inputs))
