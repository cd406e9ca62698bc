"""Names for what Flower's legacy ``Strategy`` hands a strategy at the end of a stage."""

from __future__ import annotations

from flwr.common import EvaluateRes, FitRes, Parameters, Scalar
from flwr.server.client_proxy import ClientProxy

__all__ = [
    "AggregatedEvaluate",
    "AggregatedFit",
    "EvaluateFailures",
    "EvaluateResults",
    "FitFailures",
    "FitResults",
]

#: The devices' replies to a training stage.
FitResults = list[tuple[ClientProxy, FitRes]]
#: The training stage's failures: error replies and exceptions.
FitFailures = list[tuple[ClientProxy, FitRes] | BaseException]
#: The devices' replies to an evaluation stage.
EvaluateResults = list[tuple[ClientProxy, EvaluateRes]]
#: The evaluation stage's failures.
EvaluateFailures = list[tuple[ClientProxy, EvaluateRes] | BaseException]
#: What ``aggregate_fit`` returns: the new global parameters (if any) and metrics.
AggregatedFit = tuple[Parameters | None, dict[str, Scalar]]
#: What ``aggregate_evaluate`` returns: the loss (if any) and metrics.
AggregatedEvaluate = tuple[float | None, dict[str, Scalar]]
