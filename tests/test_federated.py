"""Federated smoke runs on Flower's simulation engine: a few devices, a few rounds.

Every message a device sends is captured by an outermost ClientApp mod (it sees exactly
what leaves the device) together with the device's private user factor at that moment.
"""

from __future__ import annotations

import pickle
import uuid
from pathlib import Path

import numpy as np
import pytest
from flwr.common import bytes_to_ndarray

from stamen.client.app import build_client_app
from stamen.models import CheckpointError, Interactions
from stamen.server.checkpoint import CheckpointStore
from stamen.simulation import runner as runner_module
from stamen.simulation.config import load_config
from stamen.simulation.runner import initial_shared, run_federated
from stamen.simulation.split import leave_one_out

pytestmark = pytest.mark.slow

N_USERS, N_ITEMS, DIM = 8, 150, 8
FIT_METRICS = {"train_loss"}
EVAL_METRICS = {
    "hr@10",
    "hr@20",
    "ndcg@10",
    "ndcg@20",
    "recall@10",
    "recall@20",
    "sampled_hr@10",
    "sampled_hr@20",
    "sampled_ndcg@10",
    "sampled_ndcg@20",
    "valid_hr@10",
    "valid_ndcg@10",
    "valid_sampled_hr@10",
}


def _population(seed: int = 0) -> Interactions:
    rng = np.random.default_rng(seed)
    users, items, times = [], [], []
    for u in range(N_USERS):
        chosen = rng.choice(N_ITEMS // 2, size=12, replace=False) + (u % 2) * (N_ITEMS // 2)
        users += [u] * 12
        items += chosen.tolist()
        times += sorted(rng.integers(0, 10_000, 12).tolist())
    return Interactions.from_raw(
        np.array(users),
        np.array(items),
        np.ones(len(users)),
        np.array(times),
        item_ids=np.arange(N_ITEMS),
    )


class _Capture:
    """A picklable Flower mod that records every reply a device sends."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, msg, context, call_next):  # noqa: ANN001, ANN204
        from stamen.client.app import USER_STATE_KEY

        reply = call_next(msg, context)
        content = reply.content
        record = {
            "type": reply.metadata.message_type,
            "arrays": {k: r.to_numpy_ndarrays() for k, r in content.array_records.items()},
            "metrics": {k: dict(r) for k, r in content.metric_records.items()},
            "configs": {k: dict(r) for k, r in content.config_records.items()},
            "user_factor": (
                context.state[USER_STATE_KEY].to_numpy_ndarrays()[0]
                if USER_STATE_KEY in context.state
                else None
            ),
        }
        name = f"{reply.metadata.message_type}-{uuid.uuid4().hex}.pkl"
        (self.folder / name).write_bytes(pickle.dumps(record))
        return reply


#: The two ways a run can leave a device: plain aggregation, and the default SecAgg+ with
#: distributed user-level DP on top (each device clips and adds its noise share).
VARIANTS = {
    "plain": {"secagg": {"enabled": False}},
    "secagg-dp": {
        "secagg": {
            "enabled": True,
            "num_shares": 3,
            "reconstruction_threshold": 2,
            "clipping_range": 3.0,  # room for the noise shares (1 + 7 * 0.5 / 2 = 2.75)
        },
        "dp": {"mode": "distributed", "noise_multiplier": 0.5, "clip_norm": 1.0},
    },
}


def _failed_devices(result) -> dict[int, list[str]]:  # noqa: ANN001
    """Round -> why its devices failed (training and evaluation), for rounds with any."""
    return {
        h["round"]: h.get("failure_reasons", []) + h.get("evaluate_failure_reasons", [])
        for h in result.history
        if h["failures"] or h.get("evaluate_failures")
    }


def _run(variant: str, tmp_path_factory, monkeypatch_module):  # noqa: ANN001, ANN202
    """Run ``variant``, capturing what devices send; any device failing fails the fixture
    with the reasons the server recorded and Flower's last error lines."""
    captured = tmp_path_factory.mktemp("messages")
    output = tmp_path_factory.mktemp("run")
    monkeypatch_module.setattr(
        runner_module,
        "build_client_app",
        lambda *a, **k: build_client_app(*a, **k, outer_mods=[_Capture(captured)]),
    )
    split = leave_one_out(_population(), seed=0)
    config = load_config(
        None,
        {
            "rounds": 2,
            "clients_per_round": 4,
            "eval_every": 1,
            "local": {"dim": DIM, "refresh_steps": 3},
            "output": str(output),
            **VARIANTS[variant],
        },
    )
    result = run_federated(config, split, output=output)
    failed = _failed_devices(result)
    assert not failed, f"devices failed (round: reasons): {failed}; Flower: {result.errors[-4:]}"
    messages = [pickle.loads(p.read_bytes()) for p in sorted(captured.glob("*.pkl"))]
    return config, split, result, messages, output


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, monkeypatch_module):
    return _run("plain", tmp_path_factory, monkeypatch_module)


@pytest.fixture(scope="module")
def secagg_run(tmp_path_factory, monkeypatch_module):
    return _run("secagg-dp", tmp_path_factory, monkeypatch_module)


@pytest.fixture(params=sorted(VARIANTS))
def federated_run(request):
    """Each run in turn, for the checks that hold for both."""
    return request.getfixturevalue({"plain": "plain_run", "secagg-dp": "secagg_run"}[request.param])


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_item_factors_change_and_rounds_complete(federated_run) -> None:
    config, split, result, _, _ = federated_run
    start = initial_shared(split.n_items, config)
    assert [h["round"] for h in result.history] == [1, 2]
    assert all(h["devices"] == 4 and h["failures"] == 0 for h in result.history)
    assert not np.allclose(result.shared[0], start[0])
    assert not np.allclose(result.shared[1], start[1])
    assert set(result.history[-1]["evaluate"]) >= EVAL_METRICS


def _check_evaluate_replies(evals: list[dict]) -> None:
    for m in evals:
        assert not m["arrays"]
        assert set(m["metrics"]) == {"evaluateres.loss", "evaluateres.num_examples"}
        assert m["metrics"]["evaluateres.num_examples"]["num_examples"] in (0, 1)
        assert set(m["configs"]["evaluateres.metrics"]) <= EVAL_METRICS


def test_devices_send_only_dense_shared_updates_and_aggregate_metrics(plain_run) -> None:
    config, split, result, messages, _ = plain_run
    assert not config.secagg.enabled
    fits = [m for m in messages if m["type"] == "train"]
    evals = [m for m in messages if m["type"] == "evaluate"]
    assert len(fits) == 8 and len(evals) == 2 * N_USERS
    shared_shapes = [(split.n_items, DIM), (split.n_items,)]
    for m in fits:
        assert set(m["arrays"]) == {"fitres.parameters"}
        assert [a.shape for a in m["arrays"]["fitres.parameters"]] == shared_shapes
        assert m["metrics"] == {"fitres.num_examples": {"num_examples": 1}}
        assert set(m["configs"]) == {"fitres.metrics", "fitres.status"}
        assert set(m["configs"]["fitres.metrics"]) == FIT_METRICS
        payload = sum(a.nbytes for a in m["arrays"]["fitres.parameters"])
        assert all(h["upload_bytes_per_device"] == payload for h in result.history)
    _check_evaluate_replies(evals)


#: What each SecAgg+ stage's reply may hold (Flower's secaggplus_mod keys).
SECAGG_STAGE_KEYS = [{"pk1", "pk2"}, {"dsts", "ctxts"}, {"masked_params"}, {"nids", "shares"}]


def test_under_secagg_devices_send_only_keys_shares_and_masked_vectors(secagg_run) -> None:
    config, split, result, messages, _ = secagg_run
    assert config.secagg.enabled and config.dp.mode == "distributed"
    fits = [m for m in messages if m["type"] == "train"]
    evals = [m for m in messages if m["type"] == "evaluate"]
    assert len(fits) == 4 * 8 and len(evals) == 2 * N_USERS  # 4 stages x 4 devices x 2
    stages = [0, 0, 0, 0]
    mod_range = 2**32  # SecAggPlusWorkflow's default modulus
    for m in fits:
        secagg = m["configs"]["secaggplus_configs"]
        stage = SECAGG_STAGE_KEYS.index(set(secagg))
        stages[stage] += 1
        if stage != 2:
            assert not m["arrays"] and not m["metrics"]
            assert set(m["configs"]) == {"secaggplus_configs"}
            continue
        # the masked update: no plain parameters, no training loss, no counts
        assert m["arrays"] == {"fitres.parameters": []}
        assert m["metrics"] == {"fitres.num_examples": {"num_examples": 1}}
        assert m["configs"]["fitres.metrics"] == {}
        weight, *masked = [bytes_to_ndarray(b) for b in secagg["masked_params"]]
        assert weight.shape == (1,)
        assert [a.shape for a in masked] == [(split.n_items, DIM), (split.n_items,)]
        values = np.concatenate([a.ravel() for a in masked]).astype(np.float64)
        # Unmasked, a quantised update sits inside [0, quantization_range); masked, it is
        # spread over the whole modulus (expected share inside: 2**22 / 2**32 < 0.1%).
        inside = np.mean(values < config.secagg.quantization_range)
        assert inside < 0.01, inside
        assert values.min() >= 0 and values.max() < mod_range and values.max() > mod_range / 2
        payload = sum(a.nbytes for a in masked)
        assert all(h["upload_bytes_per_device"] == payload for h in result.history)
    assert stages == [8, 8, 8, 8]
    _check_evaluate_replies(evals)
    assert all(h["privacy"]["epsilon"] > 0 for h in result.history)


def _sent_arrays(m: dict) -> list[np.ndarray]:
    """Every array in a reply: array records and SecAgg+'s serialised masked vector."""
    arrays = [a for record in m["arrays"].values() for a in record]
    secagg = m["configs"].get("secaggplus_configs", {})
    arrays += [bytes_to_ndarray(b).astype(np.float64) for b in secagg.get("masked_params", [])]
    return arrays


def test_user_factor_never_appears_in_any_message(federated_run) -> None:
    config, _, _, messages, _ = federated_run
    checked = 0
    for m in messages:
        factor = m["user_factor"]
        if factor is None:  # SecAgg+ key set-up of round 1 runs before the first fit
            assert config.secagg.enabled
            assert set(m["configs"]["secaggplus_configs"]) in SECAGG_STAGE_KEYS[:2]
            continue
        assert factor.shape == (DIM,)
        for arrays in [_sent_arrays(m)]:
            for a in arrays:
                assert a.shape != factor.shape
                rows = a.reshape(-1, DIM) if a.size % DIM == 0 else a.reshape(1, -1)
                if rows.shape[1] == DIM:
                    assert not np.isclose(rows, factor, atol=1e-6).all(axis=1).any()
                    checked += 1
        for record in [*m["metrics"].values(), *m["configs"].values()]:
            for value in record.values():
                flat = np.ravel(np.asarray(value, dtype=object))
                assert not any(
                    np.isclose(float(v), factor).all() for v in flat if isinstance(v, float)
                )
    assert checked == 8


def test_resume_continues_from_the_checkpoint(federated_run, tmp_path) -> None:
    config, split, first, _, output = federated_run
    saved = CheckpointStore(output / "checkpoints").latest()
    assert saved is not None and saved.round == 2
    resumed_config = config.model_copy(update={"rounds": 3, "resume": True})
    result = run_federated(resumed_config, split, output=output)
    assert result.resumed_from == 2
    assert [h["round"] for h in result.history] == [1, 2, 3]
    assert result.history[-1]["devices"] == 4, (result.history[-1], result.errors[-4:])
    assert not np.allclose(result.shared[0], first.shared[0])
    wrong = config.model_copy(
        update={
            "rounds": 4,
            "resume": True,
            "local": config.local.model_copy(update={"dim": DIM * 2}),
        }
    )
    with pytest.raises(CheckpointError, match="dim"):
        run_federated(wrong, split, output=output)
