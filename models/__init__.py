"""The shared vocabulary: data schemas, models, losses, the training loop, top-k, metrics.

Imports no other Stamen package (only the root module ``stamen.errors``) and never ``flwr``.
"""

from stamen import lazy_attributes
from stamen.errors import (
    BundleError,
    CheckpointError,
    ChecksumError,
    ConfigError,
    DataError,
    DataFormatError,
    StamenError,
)

#: Names loaded on first use (``__getattr__``), by module: importing the package (for its
#: errors, say) does not load torch.
_LAZY = {
    "stamen.models.batches": ("Batch", "UserItems", "user_batches"),
    "stamen.models.bundle": ("BUNDLE_FORMAT", "ReleaseBundle", "ReleaseCatalog", "ReleaseIdentity"),
    "stamen.models.losses": ("LOSSES", "bce_loss", "bpr_loss", "softmax_loss"),
    "stamen.models.metrics": (
        "batch_metrics",
        "full_ranks",
        "ranking_metrics",
        "sampled_ranks",
        "target_nll",
        "top_k",
    ),
    "stamen.models.mf.factorization": ("MatrixFactorization",),
    "stamen.models.quantize": ("ItemTable",),
    "stamen.models.schema": ("Catalog", "Dataset", "Interactions"),
    "stamen.models.mf.settings": ("SHARED_PARAMETERS", "LocalSettings"),
    "stamen.models.training": ("fit", "refresh_users", "torch_generator"),
}
__getattr__ = lazy_attributes(__name__, _LAZY)

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
    "ReleaseIdentity",
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
    "target_nll",
    "top_k",
    "torch_generator",
    "user_batches",
]
