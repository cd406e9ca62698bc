"""A malicious device under SecAgg+ on Flower's simulation engine: one of four devices runs
a modified ClientApp that adds ring elements of its choosing to its masked vector (what a
device that skips its own check, or Flower's quantisation, can send). Round 1 it moves the
sum by a vector larger than any honest device's clip norm but within what the server's
check accepts: the round aggregates, and the device's influence on the sum stays within
``malicious_influence_bound``. Rounds 2 and 3 it sends the range's maximum in every
coordinate, then a wrap-around element: the server refuses each sum, the round fails
with the reason recorded, and nothing is published. Round 4 it forges its weight slot
instead, which only rescales the mean: the summed weights SecAgg+ unmasks refuse it.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from flwr.common import bytes_to_ndarray, ndarray_to_bytes
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    Key,
    Stage,
)
from helpers.flower_rounds import own_updates, run_recorded, secagg_config

from stamen.models import ReleaseBundle
from stamen.privacy import (
    MODULUS_RANGE,
    clip_update,
    malicious_influence_bound,
    open_signed,
    update_norm,
)
from stamen.simulation.datasets import generate_synthetic
from stamen.simulation.engines.flower import initial_shared
from stamen.simulation.protocol.split import leave_one_out

pytestmark = pytest.mark.slow

N_DEVICES, N_ITEMS = 4, 200
MALICIOUS = 2  # partition id of the modified device
CLIP = 10.0  # large against the honest updates: the accepted attack is far above them
#: Round 1's shift of the sum: twice an honest device's largest update, in a fixed direction.
SHIFT_NORM = 2 * CLIP
#: The round in which the device forges its weight slot instead of its values.
FORGED_WEIGHT_ROUND = 4


def _shift(shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    parts = [rng.normal(size=s) for s in shapes]
    scale = SHIFT_NORM / update_norm(parts)
    return [p * scale for p in parts]


class _Malicious:
    """A Flower mod (picklable for Ray) outside SecAgg+'s: on the malicious device's
    masked-vector reply it adds its chosen ring elements (modulo 2^32) to every value
    array (its weight, the first array, is left alone). The masks cancel in the sum, so
    these elements land in the unmasked sum as they are."""

    def __init__(self, clipping_range: float, quantization_range: int) -> None:
        self.level = 2 * clipping_range / quantization_range  # one quantisation level
        self.quantization_range = quantization_range

    def _elements(self, rnd: int, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
        if rnd == 1:  # the shift, in quantisation levels
            return [np.round(s / self.level).astype(np.int64) for s in _shift(shapes)]
        if rnd == 2:  # +2 ranges on top of its own value: the range's top and beyond
            return [np.full(s, self.quantization_range, np.int64) for s in shapes]
        return [np.full(s, MODULUS_RANGE // 2, np.int64) for s in shapes]  # wrap-around

    def __call__(self, msg, context, call_next):  # noqa: ANN001, ANN204
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        stage = configs.get(Key.STAGE) if configs is not None else None  # SecAgg+ pops it
        reply = call_next(msg, context)
        if (
            stage != Stage.COLLECT_MASKED_VECTORS
            or int(context.node_config["partition-id"]) != MALICIOUS
            or reply.has_error()
        ):
            return reply
        out = reply.content.config_records[RECORD_KEY_CONFIGS]
        masked = [bytes_to_ndarray(b) for b in out[Key.MASKED_PARAMETERS]]
        rnd = int(msg.metadata.group_id)
        if rnd == FORGED_WEIGHT_ROUND:  # one more device's weight: the mean shrinks by n/(n+1)
            masked[0] = (masked[0] + self.quantization_range) % MODULUS_RANGE
            out[Key.MASKED_PARAMETERS] = [ndarray_to_bytes(a) for a in masked]
            return reply
        added = self._elements(rnd, [a.shape for a in masked[1:]])
        masked[1:] = [(a + e) % MODULUS_RANGE for a, e in zip(masked[1:], added, strict=True)]
        out[Key.MASKED_PARAMETERS] = [ndarray_to_bytes(a) for a in masked]
        return reply


def test_a_malicious_device_is_bounded_or_its_round_refused(tmp_path) -> None:
    torch.set_num_threads(1)
    split = leave_one_out(generate_synthetic(N_DEVICES, N_ITEMS, seed=5).interactions, seed=0)
    config = secagg_config(
        N_DEVICES,
        rounds=FORGED_WEIGHT_ROUND,
        secagg={"num_shares": 3, "reconstruction_threshold": 2},
        dp={"mode": "central", "noise_multiplier": 0.0, "clip_norm": CLIP},
        evaluate=False,
    )
    initial = initial_shared(split.n_items, config)
    own = [clip_update(u, max_norm=CLIP)[0] for u in own_updates(initial, split, config)]
    assert max(update_norm(u) for u in own) < SHIFT_NORM / 4  # the shift dwarfs them
    settings = config.server_settings(split.n_users)
    secagg = settings.secagg.resolved(CLIP)  # the range follows the clip norm: C
    strategy = run_recorded(
        split,
        config,
        initial=initial,
        folder=tmp_path,
        outer_mods=[_Malicious(secagg.value_range(), secagg.quantization_range)],
        log_level=logging.CRITICAL,
        publish=True,
    )
    assert strategy.plan.secagg.clipping_range == CLIP
    first, refused_max, refused_wrap, forged_weight = strategy.history

    # round 1: accepted; the device moved the sum by its own update plus the shift, more
    # than any honest device can (CLIP), and no more than the documented bound
    assert first.failed is None and first.devices == N_DEVICES and first.release
    received, _ = strategy.received[0]
    total = [a.astype(np.float64) * N_DEVICES for a in received[0]]
    others = [sum(own[r][i] for r in range(N_DEVICES) if r != MALICIOUS) for i in range(2)]
    influence = update_norm([t - o for t, o in zip(total, others, strict=True)])
    size = sum(a.size for a in total)
    bound = malicious_influence_bound(
        devices=N_DEVICES, size=size, clip_norm=CLIP, noise_std=0.0, secagg=secagg
    )
    shift = _shift([a.shape for a in total])
    expected = [u + s for u, s in zip(own[MALICIOUS], shift, strict=True)]
    assert CLIP < influence <= bound
    assert influence == pytest.approx(update_norm(expected), rel=1e-3)  # it landed

    # rounds 2 and 3: refused, recorded with the reason, nothing published, model kept
    for record in (refused_max, refused_wrap):
        assert record.failed is not None and "honest devices can reach" in record.failed
        assert record.release is None and record.devices == N_DEVICES
        assert record.aggregation == "refused: the unmasked sum is out of bounds"
    assert "L2 norm" in refused_max.failed and "a coordinate" in refused_wrap.failed
    # round 4: a forged weight only rescales the mean, which the sum's bounds let pass; the
    # summed weights SecAgg+ unmasked name it
    assert forged_weight.failed is not None and forged_weight.release is None
    assert "a device forged its weight" in forged_weight.failed
    q = secagg.quantization_range
    assert f"weight sum is {(N_DEVICES + 1) * q}, not the {N_DEVICES * q}" in forged_weight.failed
    folder = tmp_path / "releases"
    published = sorted(p.name for p in folder.glob("release-*.stamen"))
    assert published == ["release-000000.stamen", "release-000001.stamen"]  # 0: provisioned
    bundle = ReleaseBundle.decode(
        open_signed(
            (folder / "release-000001.stamen").read_bytes(),
            public_key=(folder / "release.pub").read_bytes(),
        )
    )
    for kept, after in zip(bundle.shared_arrays(), strategy.server.arrays(), strict=True):
        np.testing.assert_array_equal(kept, after)  # rounds 2 to 4 left the model as it was
    assert len(strategy.received) == 4  # each refused round did reach aggregate_fit
