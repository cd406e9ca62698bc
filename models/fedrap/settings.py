"""Hyper-parameters of FedRAP's device step (``--model fedrap``, the ``[fedrap]`` section),
with the published ML-100K configuration as defaults: the reference code's
(``github.com/mtics/FedRAP``) README command for ``ml-100k`` (``--mu 1e-3
--l2_regularization 1e-6 --lr_network 1e-4 --lr_args 1e3``) over its ``train.py`` defaults
(embedding dim 32, 10 local epochs with tolerance 1e-4, batches of 2048, 4 sampled
negatives per positive, λ 0.1, an L1 penalty on the global table, the ``tanh`` curriculum,
learning rates × 0.97 per round) and ``model/engine.py``'s per-step ``ExponentialLR``
(γ 0.95). ``train.py``'s own defaults differ (``lr_network`` 0.5, ``lr_args`` 200,
``l2_regularization`` 1e-4, ``mu`` 0.1)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["FedRAPSettings"]


class FedRAPSettings(BaseModel):
    """Hyper-parameters of FedRAP's device step; the server sends them with each round."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dim: int = Field(32, gt=0, description="item embedding dimension")
    init_std: float = Field(
        1.0,
        gt=0,
        description="std of the initial global and personal item tables (torch's nn.Embedding: 1)",
    )
    init_seed: int = Field(
        0,
        description="seed of the initial personal table and score function every device "
        "starts from (the reference starts each client from a copy of one model); a run "
        "that leaves it unset uses its own seed",
    )
    local_epochs: int = Field(10, ge=1, description="most local passes over the examples")
    tol: float = Field(
        1e-4,
        ge=0,
        description="a device stops after an epoch that moved its running mean loss by less "
        "than this fraction (the reference's tol)",
    )
    batch_size: int = Field(2048, ge=1, description="training examples per local SGD step")
    negatives: int = Field(
        4, ge=1, description="sampled negatives per positive, drawn from the device's unseen items"
    )
    score_lr: float = Field(
        1e-4, gt=0, description="SGD learning rate of the score function (lr_network)"
    )
    item_lr: float = Field(1e3, gt=0, description="SGD learning rate of both item tables (lr_args)")
    weight_decay: float = Field(
        1e-6, ge=0, description="SGD weight decay of every part (the reference's l2_regularization)"
    )
    round_decay: float = Field(
        0.97, gt=0, le=1, description="both learning rates × this per round (decay_rate)"
    )
    step_decay: float = Field(
        0.95, gt=0, le=1, description="both learning rates × this per local step (ExponentialLR)"
    )
    lam: float = Field(
        0.1, ge=0, description="λ, the weight of -‖D_u - C‖² (personal part kept apart)"
    )
    mu: float = Field(1e-3, ge=0, description="μ, the weight of the L1 norm of C (sparsity)")
    curriculum: Literal["tanh", "fixed"] = Field(
        "tanh",
        description="tanh: λ and μ grow as tanh(t/10) over rounds (the paper's curriculum, the "
        "reference's vary_param default); fixed: always λ and μ",
    )

    def weights(self, rnd: int) -> tuple[float, float]:
        """``(λ, μ)`` in round ``rnd`` (1 for the first). Under ``tanh`` as the reference's
        ``Engine.federatedTrainOneRound`` sets them after each round: 0 in rounds 1 and 2,
        then ``tanh((rnd - 2) / 10)`` times ``lam`` and ``mu``."""
        if rnd < 1:
            raise ValueError(f"rounds count from 1, got {rnd}")
        if self.curriculum == "fixed":
            return self.lam, self.mu
        grow = math.tanh(max(rnd - 2, 0) / 10)
        return grow * self.lam, grow * self.mu

    def rates(self, rnd: int) -> tuple[float, float]:
        """``(score_lr, item_lr)`` at the first local step of round ``rnd`` (1 for the
        first): the settings' rates × ``round_decay ** (rnd - 1)``."""
        if rnd < 1:
            raise ValueError(f"rounds count from 1, got {rnd}")
        decay = self.round_decay ** (rnd - 1)
        return self.score_lr * decay, self.item_lr * decay

    def to_config(self) -> dict[str, bool | bytes | float | int | str]:
        """Flat form for a Flower ``FitIns.config``."""
        return dict(self.model_dump())
