"""Stamen's Flower ServerApps: ``FederatedAveraging`` on the legacy workflow stack, with
Flower's ``SecAggPlusWorkflow`` as the fit workflow when secure aggregation is on, and
:class:`RoundEnd` as each round's evaluate stage (private analytics queries, federated
evaluation, the round's release and checkpoint).
``server_app`` is Stamen's one ServerApp: the run config's ``runtime`` picks what it
runs (``stamen.runtimes``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import flwr.server.workflow.secure_aggregation.secaggplus_workflow as _secaggplus
import numpy as np
from flwr.app import Context
from flwr.compat.common.recorddict_compat import arrayrecord_to_parameters
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.server.workflow.default_workflows import (
    default_evaluate_workflow,
    default_fit_workflow,
)
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState

from stamen.privacy import SecAggSettings
from stamen.runtimes import SERVER_RUNTIMES, load_runtime
from stamen.server.analytics import PrivateSum
from stamen.server.strategy import FederatedAveraging

__all__ = [
    "RoundEnd",
    "WeighingSecAggPlusWorkflow",
    "build_server_app",
    "run_query",
    "run_rounds",
    "secagg_workflow",
    "server_app",
]


class WeighingSecAggPlusWorkflow(SecAggPlusWorkflow):
    """Flower's SecAgg+ fit workflow that also hands the strategy the unmasked weight slot.

    Flower's ``unmask_stage`` divides the unmasked sum by the summed weights and passes the
    strategy only the mean, so a device that forged its weight slot would rescale the mean
    unseen. This workflow records the summed weights where Flower reads them
    (``factor_extract``, looked up in the workflow's module at each call) on the strategy,
    as ``unmasked_weight_sum``, before Flower calls its ``aggregate_fit``, which checks it
    (``stamen.server.rounds.check_secure_sum``). Nothing else of Flower's stage changes."""

    def unmask_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        """Flower's unmask stage, with the summed weights recorded on the strategy."""
        strategy = context.strategy
        extract = _secaggplus.factor_extract

        def weighed(parameters: list[np.ndarray]) -> tuple[int, list[np.ndarray]]:
            weight, values = extract(parameters)
            strategy.unmasked_weight_sum = int(weight)  # type: ignore[attr-defined]
            return weight, values

        _secaggplus.factor_extract = weighed
        try:
            return bool(super().unmask_stage(grid, context, state))
        finally:
            _secaggplus.factor_extract = extract


def secagg_workflow(settings: SecAggSettings) -> SecAggPlusWorkflow:
    """Flower's SecAgg+ fit workflow configured from validated ``settings`` whose clipping
    range is set (``RoundPlan.secagg``, ``SecAggSettings.resolved``), recording the
    unmasked weight slot (:class:`WeighingSecAggPlusWorkflow`)."""
    return WeighingSecAggPlusWorkflow(
        num_shares=settings.num_shares,
        reconstruction_threshold=settings.reconstruction_threshold,
        max_weight=1.0,
        clipping_range=settings.value_range(),
        quantization_range=settings.quantization_range,
        timeout=settings.timeout,
    )


def run_query(grid: Grid, context: LegacyContext, query: PrivateSum) -> None:
    """Run one private sum query (``stamen.server.analytics``) as a fit round of its own:
    through SecAgg+ when the query has SecAgg+ settings, Flower's plain fit workflow
    otherwise. The query's strategy returns no parameters, so the global model stays."""
    legacy = LegacyContext(
        context, config=context.config, strategy=query, client_manager=context.client_manager
    )
    if query.secagg is not None:
        secagg_workflow(query.secagg)(grid, legacy)
    else:
        default_fit_workflow(grid, legacy)


class RoundEnd:
    """Flower's evaluate stage of each round, as Stamen runs it: the round's analytics
    queries (trending, the experiments' measurements, the candidate policies' off-policy
    evaluation), then federated evaluation (a
    secure sum, or Flower's evaluate workflow in the clear), then the round's close
    (record, release, checkpoint)."""

    def __init__(self, strategy: FederatedAveraging) -> None:
        self.strategy = strategy

    def __call__(self, grid: Grid, context: Context) -> None:
        """Run the stage for the current round of ``context`` (a ``LegacyContext``)."""
        assert isinstance(context, LegacyContext)
        strategy = self.strategy
        # Flower's DefaultWorkflow records the round number as an int
        current = cast(int, context.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND])
        rnd = strategy._global_round(current)
        if strategy.trending_due(rnd):
            run_query(grid, context, strategy.ask_trending(rnd))
            strategy.take_trending(rnd)
        for measurements in strategy.measurements():
            if measurements.due(rnd):
                for key in measurements.queries:
                    run_query(grid, context, measurements.ask(key, rnd))
                    strategy.record_query(measurements.name(key), measurements.take(key))
        if strategy.secure_evaluates(rnd):
            parameters = arrayrecord_to_parameters(
                context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True
            )
            connected = context.client_manager.num_available()
            run_query(grid, context, strategy.ask_evaluation(rnd, parameters, connected))
            strategy.take_evaluation(rnd)
        else:
            default_evaluate_workflow(grid, context)
        strategy.finish_round(rnd)


def run_rounds(grid: Grid, context: Context, strategy: FederatedAveraging) -> None:
    """Run the strategy's remaining rounds on ``grid``."""
    if strategy.remaining_rounds == 0:
        return
    legacy = LegacyContext(
        context, config=ServerConfig(num_rounds=strategy.remaining_rounds), strategy=strategy
    )
    secagg = strategy.plan.secagg  # the clipping range resolved from the clip norm
    fit_workflow = secagg_workflow(secagg) if secagg.enabled else None
    DefaultWorkflow(fit_workflow=fit_workflow, evaluate_workflow=RoundEnd(strategy))(grid, legacy)


def build_server_app(
    make_strategy: Callable[[Context], FederatedAveraging],
    *,
    then: Callable[[Context, FederatedAveraging], FederatedAveraging | None] | None = None,
) -> ServerApp:
    """A ServerApp whose strategy ``make_strategy`` builds from the run's context; when
    its rounds are done, ``then`` may build a second strategy from the first (the
    ranker's after the retrieval model's), whose rounds follow on the same devices."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = make_strategy(context)
        run_rounds(grid, context, strategy)
        following = then(context, strategy) if then is not None else None
        if following is not None:
            run_rounds(grid, context, following)

    return app


#: Stamen's ServerApp, for every runtime: the run config's ``runtime`` picks the body
#: (``stamen.runtimes``: ``simulation`` or ``deployment``).
server_app = ServerApp()


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    serve = load_runtime(SERVER_RUNTIMES, context.run_config)
    serve(grid, context)
