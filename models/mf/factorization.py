"""Matrix factorisation: a private user table and a shared item scorer.

The item side is one ``nn.Linear(dim, n_items)``: its weight holds the item factors and its
bias the item biases, so scoring every item for a batch of users is one matrix product and
Opacus' per-sample-gradient machinery (ghost clipping) handles the item table natively.
The user side is an ``nn.Embedding``; on a device it has exactly one row, and that row never
leaves the device. ``forward`` returns user embeddings; losses and retrieval are separate
functions (``stamen.models.losses``, ``stamen.models.metrics``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from stamen.models.mf.settings import SHARED_PARAMETERS

__all__ = ["MatrixFactorization"]


class MatrixFactorization(nn.Module):
    """Dot-product matrix factorisation with item biases.

    Args:
        n_users: rows of the user table (1 on a device).
        n_items: number of items in the catalogue.
        dim: latent dimension.
        init_std: standard deviation of the normal initialisation of both tables.
        generator: source of the initial values (explicit randomness).
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int = 64,
        *,
        init_std: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.n_items = n_items
        self.dim = dim
        self.users = nn.Embedding(n_users, dim)
        self.items = nn.Linear(dim, n_items)
        with torch.no_grad():
            self.users.weight.normal_(0.0, init_std, generator=generator)
            self.items.weight.normal_(0.0, init_std, generator=generator)
            self.items.bias.zero_()

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        """User embeddings ``(B, dim)`` for a batch of user indices."""
        return self.users(users)

    def logits(self, user_embeddings: torch.Tensor) -> torch.Tensor:
        """Scores ``(B, n_items)`` of every item for each embedding."""
        return self.items(user_embeddings)

    def pair_scores(
        self, user_embeddings: torch.Tensor, rows: torch.Tensor, items: torch.Tensor
    ) -> torch.Tensor:
        """Scores of selected (row, item) pairs without scoring the whole catalogue."""
        q = self.items.weight[items]
        return (user_embeddings[rows] * q).sum(-1) + self.items.bias[items]

    def shared_arrays(self) -> list[np.ndarray]:
        """Copies of the shared parameters, in ``SHARED_PARAMETERS`` order."""
        state = self.state_dict()
        return [state[name].detach().cpu().numpy().copy() for name in SHARED_PARAMETERS]

    def load_shared_arrays(self, arrays: list[np.ndarray]) -> None:
        """Overwrite the shared parameters with ``arrays`` (``SHARED_PARAMETERS`` order)."""
        if len(arrays) != len(SHARED_PARAMETERS):
            raise ValueError(f"expected {len(SHARED_PARAMETERS)} arrays, got {len(arrays)}")
        state = self.state_dict()
        with torch.no_grad():
            for name, array in zip(SHARED_PARAMETERS, arrays, strict=True):
                if tuple(array.shape) != tuple(state[name].shape):
                    raise ValueError(
                        f"{name}: expected shape {tuple(state[name].shape)}, got {array.shape}"
                    )
                state[name].copy_(torch.as_tensor(array))
