"""Hyper-parameters of PFedRec's device step (``--model pfedrec``, the ``[pfedrec]``
section), with the published configuration as defaults: the reference code's
(``github.com/Zhangcx19/IJCAI-23-PFedRec``, ``train.py``) embedding dim 32, one local
epoch, SGD at lr 0.1 for the score function and ``lr * n_items * lr_eta`` (lr_eta 80) for
the item embeddings, batches of 256, 4 sampled negatives per positive, no L2."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["PFedRecSettings"]


class PFedRecSettings(BaseModel):
    """Hyper-parameters of PFedRec's device step; the server sends them with each round."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dim: int = Field(32, gt=0, description="item embedding dimension")
    init_std: float = Field(
        1.0, gt=0, description="std of the initial item embeddings (torch's nn.Embedding: 1)"
    )
    local_epochs: int = Field(1, ge=1)
    local_lr: float = Field(0.1, gt=0, description="SGD learning rate of the score function")
    item_lr_scale: float = Field(
        80.0,
        gt=0,
        description="the item embeddings' SGD learning rate is local_lr * n_items * this "
        "(the reference code's lr_eta)",
    )
    batch_size: int = Field(256, ge=1, description="training examples per local SGD step")
    negatives: int = Field(
        4, ge=1, description="sampled negatives per positive, drawn from the device's unseen items"
    )
    weight_decay: float = Field(
        0.0, ge=0, description="SGD weight decay of both parts (the reference's l2_regularization)"
    )

    def item_lr(self, n_items: int) -> float:
        """The item embeddings' learning rate over a catalogue of ``n_items`` items."""
        return self.local_lr * n_items * self.item_lr_scale

    def to_config(self) -> dict[str, bool | bytes | float | int | str]:
        """Flat form for a Flower ``FitIns.config``."""
        return dict(self.model_dump())
