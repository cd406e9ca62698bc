"""Stamen's Flower ServerApps: ``FederatedAveraging`` on the legacy workflow stack, with
Flower's ``SecAggPlusWorkflow`` as the fit workflow when secure aggregation is on.
``server_app`` is the deployment app (``stamen.server.deployment``)."""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from stamen.privacy import SecAggSettings
from stamen.server.strategy import FederatedAveraging

__all__ = ["build_server_app", "run_rounds", "secagg_workflow", "server_app"]


def secagg_workflow(settings: SecAggSettings) -> SecAggPlusWorkflow:
    """Flower's SecAgg+ fit workflow configured from validated ``settings``."""
    return SecAggPlusWorkflow(
        num_shares=settings.num_shares,
        reconstruction_threshold=settings.reconstruction_threshold,
        max_weight=1.0,
        clipping_range=settings.clipping_range,
        quantization_range=settings.quantization_range,
        timeout=settings.timeout,
    )


def run_rounds(grid: Grid, context: Context, strategy: FederatedAveraging) -> None:
    """Run the strategy's remaining rounds on ``grid``."""
    if strategy.remaining_rounds == 0:
        return
    legacy = LegacyContext(
        context, config=ServerConfig(num_rounds=strategy.remaining_rounds), strategy=strategy
    )
    secagg = strategy.settings.secagg
    fit_workflow = secagg_workflow(secagg) if secagg.enabled else None
    DefaultWorkflow(fit_workflow=fit_workflow)(grid, legacy)


def build_server_app(make_strategy: Callable[[Context], FederatedAveraging]) -> ServerApp:
    """A ServerApp whose strategy ``make_strategy`` builds from the run's context."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_rounds(grid, context, make_strategy(context))

    return app


#: The deployment ServerApp (``stamen.server.deployment`` says what it reads).
server_app = ServerApp()


@server_app.main()
def _deployment(grid: Grid, context: Context) -> None:
    from stamen.server.deployment import Deployment, deployment_strategy
    from stamen.server.grid import PromptGrid

    strategy = deployment_strategy(Deployment(dict(context.run_config)))
    run_rounds(PromptGrid(grid), context, strategy)
