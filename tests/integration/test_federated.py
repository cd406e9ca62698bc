"""Federated smoke runs on Flower's simulation engine: a few devices, a few rounds.

Every message a device sends is captured by an outermost ClientApp mod (it sees exactly
what leaves the device) together with the device's private user factor at that moment, and
the message it answered (the global model and settings the server sent).
"""

from __future__ import annotations

import pickle
from collections import Counter

import numpy as np
import pytest
from flwr.common import bytes_to_ndarray
from helpers.capture import Capture
from helpers.populations import timed_population

from stamen.client.flower.app import build_client_app
from stamen.models import CheckpointError, Interactions
from stamen.models.bundle import ReleaseBundle, latest_release
from stamen.privacy import open_signed
from stamen.server.checkpoint import CheckpointStore
from stamen.simulation.config import load_config
from stamen.simulation.engines import flower as runner_module
from stamen.simulation.engines.flower import initial_shared, run_federated
from stamen.simulation.engines.trending import true_trending
from stamen.simulation.protocol.split import leave_one_out

pytestmark = pytest.mark.slow

N_USERS, N_ITEMS, DIM = 8, 150, 8
TRENDING_CAP = 5
FIT_METRICS = {"train_loss"}
EVAL_METRICS = {
    "hr@10",
    "hr@20",
    "ndcg@10",
    "ndcg@20",
    "recall@10",
    "recall@20",
    "mrr",
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
    items, times = [], []
    for u in range(N_USERS):
        items.append(rng.choice(N_ITEMS // 2, size=12, replace=False) + (u % 2) * (N_ITEMS // 2))
        times.append(sorted(rng.integers(0, 10_000, 12).tolist()))
    return timed_population(items, times, N_ITEMS)


#: The two ways a run can leave a device: plain aggregation, and the default SecAgg+ with
#: distributed user-level DP on top (each device clips and adds its noise share).
VARIANTS = {
    "plain": {"secagg": {"enabled": False}},
    "secagg-dp": {
        "secagg": {
            "enabled": True,
            "num_shares": 3,
            "reconstruction_threshold": 2,
            # room for the noise shares of Poisson cohorts down to num_shares (3) devices:
            # 1 + 7 * 0.5 / sqrt(3) = 3.02
            "clipping_range": 8.0,
        },
        "dp": {"mode": "distributed", "noise_multiplier": 0.5, "clip_norm": 1.0},
        # private analytics: trending counts every round, and (SecAgg+ on) secure evaluation
        "analytics": {
            "trending": {
                "every": 1,
                "window_days": 1.0,
                "cap": TRENDING_CAP,
                "dp": {"mode": "distributed", "noise_multiplier": 0.5},
            }
        },
    },
}


def _failed_devices(result) -> dict[int, list[str]]:  # noqa: ANN001
    """Round -> why its devices failed (training and evaluation), for rounds with any."""
    return {
        h.round: (h.failure_reasons or []) + (h.evaluate_failure_reasons or [])
        for h in result.history
        if h.failures or h.evaluate_failures
    }


def _run(variant: str, tmp_path_factory, monkeypatch_module):  # noqa: ANN001, ANN202
    """Run ``variant``, capturing what devices send; any device failing fails the fixture
    with the reasons the server recorded and Flower's last error lines."""
    captured = tmp_path_factory.mktemp("messages")
    output = tmp_path_factory.mktemp("run")
    monkeypatch_module.setattr(
        runner_module,
        "build_client_app",
        lambda *a, **k: build_client_app(*a, **k, outer_mods=[Capture(captured)]),
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
    assert [h.round for h in result.history] == [1, 2]
    # plain: fixed cohorts of 4; DP: Poisson cohorts (rate 4/8) of whatever size was drawn
    assert all(h.devices == h.cohort and h.failures == 0 for h in result.history)
    if not config.dp.enabled:
        assert all(h.cohort == 4 for h in result.history)
    assert not np.allclose(result.shared[0], start[0])
    assert not np.allclose(result.shared[1], start[1])
    assert set(result.history[-1].evaluate.metrics) >= EVAL_METRICS


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
        assert all(h.upload_bytes_per_device == payload for h in result.history)
    _check_evaluate_replies(evals)


#: What each SecAgg+ stage's reply may hold (Flower's secaggplus_mod keys).
SECAGG_STAGE_KEYS = [{"pk1", "pk2"}, {"dsts", "ctxts"}, {"masked_params"}, {"nids", "shares"}]


def test_under_secagg_devices_send_only_keys_shares_and_masked_vectors(secagg_run) -> None:
    config, split, result, messages, _ = secagg_run
    assert config.secagg.enabled and config.dp.mode == "distributed"
    fits = [m for m in messages if m["type"] == "train"]
    # secure evaluation: no device sends its metrics in an evaluation reply
    assert not [m for m in messages if m["type"] == "evaluate"]
    sampled = sum(h.cohort for h in result.history)  # Poisson cohorts under DP
    trending = sum(h.analytics["trending"].cohort for h in result.history)
    evaluated = sum(h.evaluate.answered for h in result.history)
    asked = sampled + trending + evaluated
    assert len(fits) == 4 * asked  # 4 stages per device and query
    by_query = Counter(_query(m) for m in fits if _query(m) is not None)
    assert by_query == {"training": sampled, "trending": trending, "evaluation": evaluated}
    shapes = {
        "training": [(split.n_items, DIM), (split.n_items,)],
        "trending": [(split.n_items,)],
        "evaluation": [(len(EVAL_METRICS) + 1,)],
    }
    stages = [0, 0, 0, 0]
    pooled = []
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
        assert [a.shape for a in masked] == shapes[_query(m)]
        values = np.concatenate([a.ravel() for a in masked]).astype(np.float64)
        pooled.append(values)
        assert values.min() >= 0 and values.max() < mod_range
        if _query(m) == "training":
            payload = sum(a.nbytes for a in masked)
            assert all(h.upload_bytes_per_device == payload for h in result.history)
    assert stages == [asked] * 4
    # Unmasked, a quantised vector sits inside [0, quantization_range); masked, it is
    # spread over the whole modulus (expected share inside: 2**22 / 2**32 < 0.1%)
    values = np.concatenate(pooled)
    assert np.mean(values < config.secagg.quantization_range) < 0.01
    assert values.max() > mod_range / 2
    assert all(h.privacy.epsilon > 0 for h in result.history)


def _query(m: dict) -> str | None:
    """What a SecAgg+ masked-vector reply answered (``None``: another stage's reply)."""
    if "masked_params" not in m["configs"].get("secaggplus_configs", {}):
        return None
    task = m["received_configs"]["fitins.config"]["task"]
    return {"model": "training", "evaluation-sum": "evaluation"}.get(task, task)


def test_trending_counts_go_into_the_release_with_their_own_epsilon(secagg_run) -> None:
    """The noisy trending counts are the true counts plus noise of the reported standard
    deviation, they reach the round's signed release, and their ε is accounted apart
    from training's (which it does not change)."""
    _, split, result, _, output = secagg_run
    records = [h.analytics["trending"] for h in result.history]
    assert all(r.devices == r.cohort == N_USERS for r in records)  # rate 1: everyone
    std = 0.5 * np.sqrt(TRENDING_CAP)  # z × sqrt(cap): one device moves the counts by sqrt(cap)
    assert all(np.isclose(r.noise_std, std) for r in records)
    epsilons = [r.privacy.epsilon for r in records]
    assert 0 < epsilons[0] < epsilons[1] < np.inf
    report = result.privacy["analytics"]["trending"]
    assert report["epsilon"] == epsilons[-1] and report["rounds"] == 2
    assert result.privacy["epsilon"] == result.history[-1].privacy.epsilon
    assert result.privacy["epsilon"] != report["epsilon"]
    bundle = ReleaseBundle.decode(
        open_signed(
            latest_release(output / "releases").read_bytes(),
            public_key=(output / "releases" / "release.pub").read_bytes(),
        )
    )
    assert bundle.release == 2 and bundle.trending is not None
    true, _ = true_trending(split, window_days=1.0, cap=TRENDING_CAP)
    assert true.sum() == N_USERS * TRENDING_CAP  # every device's 5 most recent items
    # noisy counts, negatives read as 0: within 6 standard deviations everywhere
    # (150 entries: a false failure has probability ~3e-7)
    assert np.all(np.abs(bundle.trending - true) <= 6 * std)
    assert np.all(bundle.trending >= 0)


def _sent_arrays(m: dict) -> list[np.ndarray]:
    """Every array in a reply: array records and SecAgg+'s serialised masked vector."""
    arrays = [a for record in m["arrays"].values() for a in record]
    secagg = m["configs"].get("secaggplus_configs", {})
    arrays += [bytes_to_ndarray(b).astype(np.float64) for b in secagg.get("masked_params", [])]
    return arrays


def test_user_factor_never_appears_in_any_message(federated_run) -> None:
    config, _, result, messages, _ = federated_run
    checked = 0
    for m in messages:
        if m["type"] == "get_properties":  # asked once per node: the device id, nothing else
            assert m["arrays"] == {} and m["metrics"] == {}
            assert m["configs"]["getpropertiesres.properties"] == {"device-id": m["row"]}
            assert set(m["configs"]) == {"getpropertiesres.properties", "getpropertiesres.status"}
            continue
        factor = m["user_factor"]
        if factor is None:  # SecAgg+ key set-up of round 1 runs before the first fit, and
            # a device not yet sampled for training answers analytics queries without one
            assert config.secagg.enabled
            assert set(m["configs"]["secaggplus_configs"]) in SECAGG_STAGE_KEYS
            assert _query(m) in (None, "trending", "evaluation")
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
    assert checked == sum(h.cohort for h in result.history)


def _abs_cosines(rows: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """|cos| between each row of ``rows`` and ``factor`` (0 for an all-zero row)."""
    rows = np.asarray(rows, np.float64)
    factor = np.asarray(factor, np.float64)
    norms = np.linalg.norm(rows, axis=1) * np.linalg.norm(factor)
    dots = np.abs(rows @ factor)
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def _plain_reading(m: dict) -> np.ndarray:
    """What the server reads from a plain upload: each item row's delta minus the item-row
    term it can compute itself from the global model and the settings it sent.

    For the ``ials`` loss with one local epoch the device's step is one SGD step, taken
    from the user factor ``u`` that the exact re-solve left at the loss's minimum in ``u``
    (so the step hardly moves ``u``: its gradient there is zero up to float32 rounding;
    weight decay would only rescale it). The loss's gradient in item row ``v_j`` is
    ``-2 c_j r_j u + 2 item_l2 v_j`` (``c_j`` confidence, ``r_j`` residual), so the
    uploaded delta is ``Δv_j = 2 lr c_j r_j u - lr (2 item_l2 + weight_decay) v_j``: a
    multiple of ``u`` plus a term in ``v_j`` (the global row the server sent) whose
    coefficient is made of settings the server chose. Subtracted, every row is exactly
    ``2 lr c_j r_j u``.
    """
    sent = m["received_configs"]["fitins.config"]
    # the conditions the derivation above rests on (all true of this run's settings)
    assert sent["loss"] == "ials" and sent["local_epochs"] == 1
    assert sent["update_weighting"] == "uniform" and "dp-clip-norm" not in sent
    item_delta, _ = m["arrays"]["fitres.parameters"]
    global_items, _ = m["received_arrays"]["fitins.parameters"]
    known = -sent["local_lr"] * (2 * sent["item_l2"] + sent["weight_decay"])
    return item_delta.astype(np.float64) - known * global_items.astype(np.float64)


#: A row reads as pointing along the user factor when |cos| exceeds this. In exact
#: arithmetic a plain reading's rows are multiples of ``u`` (|cos| = 1, see
#: ``_plain_reading``); what remains is float32 rounding of the deltas (relative error
#: ~1e-6 on rows of size ~lr), far inside the 0.99 bound, which would allow an error of
#: sin(arccos 0.99) = 14% of the row.
ALIGNED = 0.99


def _mean_squared_cosine_bound(n_rows: int, dim: int) -> float:
    """An upper bound on the mean of cos² over ``n_rows`` rows that carry no direction.

    Rows whose coordinates are independent and symmetric about 0 (the masked vector's
    coordinates read as signed residues mod 2**32, uniform whatever the update) have
    E[cos²] = 1/dim with any fixed vector: by symmetry the cross terms vanish and each
    coordinate carries 1/dim of the squared norm. cos² lies in [0, 1], so by Hoeffding the
    mean over independent rows exceeds 1/dim + t with probability at most exp(-2 n t²);
    t = sqrt(6 / n) makes that exp(-12) < 1e-5 per upload. A per-row bound of a few times
    1/sqrt(dim) says nothing at dim = 8 (random 8-dimensional rows reach |cos| > 0.9 among
    a few hundred), so the rows are judged together.
    """
    return 1 / dim + float(np.sqrt(6 / n_rows))


def test_plain_upload_reveals_the_user_factor_direction(plain_run) -> None:
    """Without SecAgg+ the server reads the user factor's direction from each upload: every
    item row the device holds, less the term the server knows, is a multiple of it."""
    _, split, _, messages, _ = plain_run
    fits = [m for m in messages if m["type"] == "train"]
    assert len(fits) == 8
    for m in fits:
        cosines = _abs_cosines(_plain_reading(m), m["user_factor"])
        touched = split.train.row(m["row"])
        assert len(touched) > 0 and cosines[touched].min() > ALIGNED, cosines[touched]
        # so the rows judged together are far above what rows with no direction give
        bound = _mean_squared_cosine_bound(len(cosines), DIM)
        assert np.mean(cosines[touched] ** 2) > bound


def _masked_rows(m: dict, n_items: int) -> np.ndarray:
    """The item-factor rows of a SecAgg+ masked vector, read as signed residues."""
    modulus = 2**32  # SecAggPlusWorkflow's default modulus
    _, masked_items, _ = [
        bytes_to_ndarray(b) for b in m["configs"]["secaggplus_configs"]["masked_params"]
    ]
    values = masked_items.astype(np.float64).reshape(n_items, DIM)
    return np.where(values >= modulus / 2, values - modulus, values)


def test_masked_upload_hides_the_user_factor_direction(secagg_run, plain_run) -> None:
    """Under SecAgg+ the masked vector's rows point nowhere in particular: their mean cos²
    with the user factor is what direction-free rows give, and no row lines up with it.
    The same criterion rejects the raw updates of the plain run."""
    _, split, result, messages, _ = secagg_run
    masked = [m for m in messages if m["type"] == "train" and _query(m) == "training"]
    assert len(masked) == sum(h.cohort for h in result.history)
    bound = _mean_squared_cosine_bound(split.n_items, DIM)
    for m in masked:
        cosines = _abs_cosines(_masked_rows(m, split.n_items), m["user_factor"])
        assert np.mean(cosines**2) < bound, (np.mean(cosines**2), bound)
        # a direction-free 8-dimensional row has |cos| > 0.99 with probability ~3e-7
        # (I_{1-0.99²}(7/2, 1/2) for a uniform direction): ~3e-5 over 8 x 11 touched rows
        assert cosines[split.train.row(m["row"])].max() < ALIGNED
    # The criterion can fail: the raw updates of the plain run, read the same way (every
    # row, the device's own or not), break it.
    _, plain_split, _, plain_messages, _ = plain_run
    for m in [m for m in plain_messages if m["type"] == "train"]:
        cosines = _abs_cosines(_plain_reading(m), m["user_factor"])
        assert np.mean(cosines**2) > _mean_squared_cosine_bound(plain_split.n_items, DIM)


def test_resume_continues_from_the_checkpoint(federated_run, tmp_path) -> None:
    config, split, first, _, output = federated_run
    saved = CheckpointStore(output / "checkpoints").latest()
    assert saved is not None and saved.round == 2
    resumed_config = config.model_copy(update={"rounds": 3, "resume": True})
    result = run_federated(resumed_config, split, output=output)
    assert result.resumed_from == 2
    assert [h.round for h in result.history] == [1, 2, 3]
    last = result.history[-1]
    assert last.devices == last.cohort >= 3, (last, result.errors[-4:])
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
