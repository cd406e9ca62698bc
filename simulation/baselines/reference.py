"""The centralised reference of a model other than MF: the same model family, module, loss
and device step, trained on pooled data with no secure aggregation and no DP.

A run of ``two-tower`` or ``sequential`` is compared with its own family trained centrally,
not with centralised MF (which ``stamen simulate`` still reports beside it). The reference
runs the batched engine (``stamen.simulation.engines.batched``) with one local step per
device (``local-epochs`` 1), so each of its rounds is one step of the run's server
optimiser on the mean gradient of a batch of ``clients-per-round`` users: centralised
mini-batch training through the one training loop. It runs ``[centralised] rounds`` rounds
(unset: the federated run's), is measured on the validation items every ``eval-every``
rounds (and after the last), and keeps the round with the best validation NDCG@10; the
test items are never looked at to choose.

Only the models whose devices keep no private state between rounds have one
(:data:`REFERENCE_MODELS`): PFedRec's per-device score function has no pooled counterpart
here, so a PFedRec run is compared with centralised MF alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from stamen.models.bundle import ReleaseCatalog
from stamen.models.registry import build_model, model_class
from stamen.privacy import RecordDP, SecAggSettings, UserDP
from stamen.server.rounds import Evaluation, RoundRecord
from stamen.simulation.baselines.scorers import shared_model_scorer
from stamen.simulation.config import SimulationConfig
from stamen.simulation.engines.batched import run_batched
from stamen.simulation.engines.flower import initial_shared
from stamen.simulation.protocol.evaluate import Scorer, evaluate
from stamen.simulation.protocol.split import Split

__all__ = ["REFERENCE_MODELS", "train_centralised_reference"]

#: The model families trained centrally by :func:`train_centralised_reference`.
REFERENCE_MODELS = ("two-tower", "sequential")


def train_centralised_reference(
    config: SimulationConfig,
    split: Split,
    catalog: ReleaseCatalog,
    *,
    on_round: Callable[[RoundRecord], None] | None = None,
) -> tuple[Scorer, dict[str, Any]]:
    """Train ``config``'s model centrally (module docstring) on ``split``; its scorer at the
    best validation round and what was run (``rounds``, ``best_round``,
    ``valid_ndcg@10``, ``seconds``)."""
    if config.model not in REFERENCE_MODELS:
        raise ValueError(f"model {config.model!r} has no centralised reference here")
    base = config.server_settings(split.n_users)
    family = model_class(base.model).settings_field
    model_settings = base.model_settings().model_copy(update={"local_epochs": 1})
    rounds = config.centralised.rounds or base.rounds
    settings = base.model_copy(
        update={
            "rounds": rounds,
            "secagg": SecAggSettings(enabled=False),
            "dp": UserDP(),
            "record_dp": RecordDP(),
            family: model_settings,
        }
    )
    model = build_model(settings.model, model_settings, catalog)
    best: dict[str, Any] = {"score": -1.0, "shared": None, "round": 0}
    measured = 0

    def measure(shared: list[np.ndarray]) -> Evaluation:
        nonlocal measured
        measured += 1
        scorer = shared_model_scorer(shared, split, model=model, seed=config.seed, stage="valid")
        score = evaluate(scorer, split, stage="valid")["ndcg@10"]
        if score > best["score"]:
            best.update(score=score, shared=[a.copy() for a in shared], round=measured)
        return Evaluation(metrics={"valid_ndcg@10": score}, devices=0)

    result = run_batched(
        split,
        settings,
        initial=initial_shared(split.n_items, config, catalog),
        model=model,
        evaluation=measure,
        on_round=on_round,
    )
    evaluated = [r.round for r in result.history if r.evaluate is not None]
    best_round = evaluated[best["round"] - 1]
    scorer = shared_model_scorer(best["shared"], split, model=model, seed=config.seed)
    return scorer, {
        "family": base.model,
        "rounds": rounds,
        "batch_users": settings.clients_per_round,
        "best_round": best_round,
        "valid_ndcg@10": best["score"],
        "seconds": round(result.seconds, 2),
    }
