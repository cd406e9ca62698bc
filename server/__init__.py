"""The coordination side: Stamen's Flower ServerApp, the round engine's plan, the
strategies, server optimisers, checkpoints and model releases. Imports ``stamen.models``,
``stamen.privacy`` and ``flwr``; never ``stamen.client``. Names load on first use, so a
command that only reads settings or writes certificates does not pay for Flower.
"""

from stamen import lazy_attributes
from stamen.errors import CertificateError, CertificateExistsError, CheckpointError

#: Names loaded on first use (``__getattr__``), by module.
_LAZY = {
    "stamen.server.app": ("build_server_app", "run_rounds", "secagg_workflow"),
    "stamen.server.checkpoint": ("Checkpoint", "CheckpointStore"),
    "stamen.server.optimizer": ("SERVER_OPTIMIZERS", "ServerOptimizer", "ServerOptimizerSettings"),
    "stamen.models.bundle": ("latest_release",),
    "stamen.server.releases": ("PUBLIC_KEY_FILE", "ReleaseWriter", "load_or_create_signing_key"),
    "stamen.server.rounds": ("Draw", "RoundPlan", "RoundRecord"),
    "stamen.server.settings": ("ServerSettings",),
    "stamen.server.strategy": ("FederatedAveraging", "RoundCallback"),
}
__getattr__ = lazy_attributes(__name__, _LAZY)

__all__ = [
    "CertificateError",
    "CertificateExistsError",
    "Checkpoint",
    "CheckpointError",
    "CheckpointStore",
    "Draw",
    "FederatedAveraging",
    "PUBLIC_KEY_FILE",
    "ReleaseWriter",
    "RoundCallback",
    "RoundPlan",
    "RoundRecord",
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
