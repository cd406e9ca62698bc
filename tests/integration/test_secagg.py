"""SecAgg+ under dropouts: a device that fails after key sharing does not fail the round,
and the server still gets exactly the survivors' mean (Flower's workflow rebuilds the
dropped device's masks from its neighbours' shares while at least the threshold remain)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    Key,
    Stage,
)
from helpers.flower_rounds import own_updates, run_recorded, secagg_config

from stamen.simulation.datasets import generate_synthetic
from stamen.simulation.engines.flower import initial_shared
from stamen.simulation.protocol.split import leave_one_out

pytestmark = pytest.mark.slow

N_DEVICES, N_ITEMS = 10, 300
DROPPED = 0  # partition id of the device that fails


class _DropOut:
    """A Flower mod (picklable for Ray) that makes one device fail in the stage where it
    should upload its masked update, i.e. after its key shares went out."""

    def __call__(self, msg, context, call_next):  # noqa: ANN001, ANN204
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        stage = configs.get(Key.STAGE) if configs is not None else None
        if (
            stage == Stage.COLLECT_MASKED_VECTORS
            and int(context.node_config["partition-id"]) == DROPPED
        ):
            raise RuntimeError("simulated dropout")
        return call_next(msg, context)


def test_round_survives_a_device_dropping_out_after_key_sharing(tmp_path) -> None:

    torch.set_num_threads(1)
    data = generate_synthetic(N_DEVICES, N_ITEMS, seed=5)
    split = leave_one_out(data.interactions, seed=0)
    config = secagg_config(N_DEVICES, secagg={"num_shares": 5, "reconstruction_threshold": 3})
    initial = initial_shared(split.n_items, config)
    strategy = run_recorded(
        split,
        config,
        initial=initial,
        folder=tmp_path,
        outer_mods=[_DropOut()],
        log_level=logging.CRITICAL,  # the dropout's error is expected
    )
    assert len(strategy.received) == 1, "the round did not reach aggregate_fit"
    received, _ = strategy.received[0]
    view = received[0]
    assert len(received) == N_DEVICES - 1
    assert strategy.history[0].devices == N_DEVICES - 1
    survivors = [row for row in range(N_DEVICES) if row != DROPPED]
    individual = own_updates(initial, split, config)
    step = strategy.plan.secagg.quantization_step()
    for i, received in enumerate(view):
        survivors_mean = np.mean([individual[r][i].astype(np.float64) for r in survivors], axis=0)
        everyone_mean = np.mean([d[i].astype(np.float64) for d in individual], axis=0)
        assert np.abs(received - survivors_mean).max() <= step
        # the dropped device's update is not in it (its contribution is far above a step)
        assert np.abs(received - everyone_mean).max() > 10 * step
