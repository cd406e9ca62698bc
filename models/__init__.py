"""The shared vocabulary: data schemas, models, losses, the training loop, top-k, metrics.

Imports no other Stamen package and never ``flwr``.
"""

from stamen.models.errors import (
    CheckpointError,
    ChecksumError,
    ConfigError,
    DataError,
    DataFormatError,
    StamenError,
)
from stamen.models.schema import Catalog, Dataset, Interactions

__all__ = [
    "Catalog",
    "CheckpointError",
    "ChecksumError",
    "ConfigError",
    "DataError",
    "DataFormatError",
    "Dataset",
    "Interactions",
    "StamenError",
]
