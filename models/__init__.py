"""The shared vocabulary: data schemas, models, losses, the training loop, top-k, metrics.

Imports no other Stamen package and never ``flwr``.
"""

from stamen.models.batches import Batch, UserItems, user_batches
from stamen.models.bundle import BUNDLE_FORMAT, BundleError, ReleaseBundle, ReleaseCatalog
from stamen.models.errors import (
    CheckpointError,
    ChecksumError,
    ConfigError,
    DataError,
    DataFormatError,
    StamenError,
)
from stamen.models.losses import LOSSES, bce_loss, bpr_loss, softmax_loss
from stamen.models.metrics import batch_metrics, full_ranks, ranking_metrics, sampled_ranks, top_k
from stamen.models.mf import SHARED_PARAMETERS, MatrixFactorization
from stamen.models.quantize import ItemTable
from stamen.models.schema import Catalog, Dataset, Interactions
from stamen.models.settings import LocalSettings
from stamen.models.training import fit, refresh_users, torch_generator

__all__ = [
    "BUNDLE_FORMAT",
    "Batch",
    "BundleError",
    "Catalog",
    "CheckpointError",
    "ChecksumError",
    "ConfigError",
    "DataError",
    "DataFormatError",
    "Dataset",
    "Interactions",
    "ItemTable",
    "LOSSES",
    "LocalSettings",
    "MatrixFactorization",
    "ReleaseBundle",
    "ReleaseCatalog",
    "SHARED_PARAMETERS",
    "StamenError",
    "UserItems",
    "batch_metrics",
    "bce_loss",
    "bpr_loss",
    "fit",
    "full_ranks",
    "ranking_metrics",
    "refresh_users",
    "sampled_ranks",
    "softmax_loss",
    "top_k",
    "torch_generator",
    "user_batches",
]
