"""The coordination side: Stamen's Flower ServerApp, strategy, server optimisers and
checkpoints and model releases. Imports ``stamen.models``, ``stamen.privacy`` and ``flwr``; never
``stamen.client``.
"""

from stamen.server.app import build_server_app, run_rounds, secagg_workflow
from stamen.server.checkpoint import Checkpoint, CheckpointStore
from stamen.server.optimizer import SERVER_OPTIMIZERS, ServerOptimizer, ServerOptimizerSettings
from stamen.server.releases import (
    PUBLIC_KEY_FILE,
    ReleaseWriter,
    latest_release,
    load_or_create_signing_key,
)
from stamen.server.settings import ServerSettings
from stamen.server.strategy import FederatedAveraging, RoundCallback

__all__ = [
    "Checkpoint",
    "CheckpointStore",
    "FederatedAveraging",
    "PUBLIC_KEY_FILE",
    "ReleaseWriter",
    "RoundCallback",
    "SERVER_OPTIMIZERS",
    "ServerOptimizer",
    "ServerOptimizerSettings",
    "ServerSettings",
    "build_server_app",
    "latest_release",
    "load_or_create_signing_key",
    "run_rounds",
    "secagg_workflow",
]
