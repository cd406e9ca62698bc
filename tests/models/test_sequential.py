"""The sequential model: causal masking, its loss against a slow reference (log-Q
corrected sampled softmax and the full softmax), dropout drawn per device, cold items from
content, and serving on a device (the user vector recomputed on every event, equal to the
batched path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.signed_releases import publish_signed
from helpers.updates import moved_shared

from stamen.client.device.device import Device
from stamen.client.pipeline.recommend import PipelineSettings
from stamen.models import ReleaseCatalog, UserItems
from stamen.models.registry import DeviceInputs, build_model
from stamen.models.sequential.model import Sequential
from stamen.privacy import generate_key

N_ITEMS = 40


def _catalog(n: int = N_ITEMS) -> ReleaseCatalog:
    return ReleaseCatalog.build(
        [f"m{i}" for i in range(n)],
        titles=[f"{'Die Hard' if i % 2 else 'Love Story'} {i} ({1990 + i % 10})" for i in range(n)],
        genres=[["Action"] if i % 2 else ["Romance"] for i in range(n)],
        year=[1990 + i % 10 for i in range(n)],
    )


def _model(**settings) -> Sequential:
    base = {"dim": 8, "hidden": 16, "max_history": 6, "negatives": 0, "dropout": 0.0}
    return build_model("sequential", {**base, **settings}, _catalog())  # type: ignore[return-value]


def _inputs(rows: list[list[int]]) -> DeviceInputs:
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    items = np.array([i for r in rows for i in r], np.int64)
    history = UserItems(indptr=indptr, items=items, n_items=N_ITEMS)
    return DeviceInputs(history=history, seeds=np.arange(len(rows), dtype=np.uint64))


def _params(model: Sequential, shared: list[np.ndarray]) -> dict[str, torch.Tensor]:
    return {n: torch.as_tensor(a) for n, a in zip(model.shared_names(), shared, strict=True)}


def _states(model, params, emb, mask) -> torch.Tensor:
    keep = torch.ones(1 + 2 * model.settings.blocks, 1, 1)
    return torch.func.functional_call(model.net, params, ("states", emb, mask, keep))


def test_no_position_sees_a_later_item_or_padding() -> None:
    model = _model()
    params = _params(model, moved_shared(model, 0.2))
    mask = torch.tensor([0.0, 0.0, 1, 1, 1, 1])
    emb = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    before = _states(model, params, emb, mask)
    for t in range(2, 6):  # change the item at position t: states before t do not move
        changed = emb.clone()
        changed[t] += torch.randn(8)  # not a constant shift, which layer norms remove
        after = _states(model, params, changed, mask)
        torch.testing.assert_close(after[:t], before[:t])
        assert not torch.allclose(after[t], before[t])
    padding = emb.clone()
    padding[:2] = torch.randn(2, 8)  # whatever sits in the padding is never read
    torch.testing.assert_close(_states(model, params, padding, mask)[2:], before[2:])


def _slow_loss(model: Sequential, shared, row: list[int], negatives: np.ndarray | None) -> float:
    """One device's loss example by example: each of the last ``train_windows ·
    max_history`` items predicted from the (at most ``max_history``) items before it in its
    window, over every catalogue item (``negatives=None``) or the target and the sampled
    negatives (an accidental hit dropped), every logit corrected by ``log Q = log(N /
    n_items)``."""
    params = _params(model, shared)
    item_emb, item_bias = model.item_embeddings(shared)
    length = model.settings.max_history
    recent = row[-(model.settings.train_windows * length + 1) :]
    losses = []
    for end in range(len(recent), 1, -length):  # each window, latest first
        window = recent[max(end - length - 1, 0) : end]
        history = torch.tensor(window[:-1])
        states = _states(model, params, item_emb[history], torch.ones(len(history)))
        for t, target in enumerate(window[1:]):
            logit = (states[t] @ item_emb.T + item_bias).double()
            if negatives is None:
                losses.append(float(torch.logsumexp(logit, 0) - logit[target]))
                continue
            log_q = np.log(len(negatives) / N_ITEMS)
            drawn = [logit[j] - log_q for j in negatives if j != target]
            positive = logit[target] - log_q
            losses.append(float(torch.logsumexp(torch.stack([positive, *drawn]), 0) - positive))
    assert len(losses) == min(len(row) - 1, model.settings.train_windows * length)
    return float(np.mean(losses))


@pytest.mark.parametrize("windows", [1, 3])
@pytest.mark.parametrize("negatives", [0, 12])
def test_the_device_loss_matches_a_slow_reference(negatives, windows) -> None:
    model = _model(negatives=negatives, train_windows=windows)
    shared = moved_shared(model, 0.2)
    # longer than one window (and, for the first, than three); a repeat; a short row
    rows = [[3, 7, 7, 1, 30, 12, 5, 9, 2, 11, 13, 17, 19, 23, 29, 31, 37, 39, 6, 8], [4, 0]]
    rows.append(rows[0][:9])
    updates = model.device_updates(shared, _inputs(rows))
    for d, row in enumerate(rows):
        drawn = None
        if negatives:  # the device's own draw (its seed is its row here)
            drawn = np.random.default_rng(d).integers(0, N_ITEMS, size=(1, negatives))[0]
        assert updates.losses[d] == pytest.approx(_slow_loss(model, shared, row, drawn), rel=1e-5)


def test_dropout_masks_are_the_devices_own_and_off_in_scoring() -> None:
    model = _model(dropout=0.5, local_epochs=2, train_windows=3)
    masks = model.dropout_masks(np.array([5, 6], np.uint64), 2, 4)
    assert masks.shape == (2, 2, 2, 1 + 2 * model.settings.blocks, 4, 8)
    assert set(torch.unique(masks).tolist()) == {0.0, 2.0}
    # the same device draws the same masks in any batch, aligned to its latest windows
    # and positions
    alone = model.dropout_masks(np.array([6], np.uint64), 3, 6)
    torch.testing.assert_close(alone[0, :, -2:, ..., -4:, :], masks[1])
    shared = moved_shared(model, 0.2)
    torch.testing.assert_close(
        model.scores(shared, _inputs([[1, 2, 3]])), model.scores(shared, _inputs([[1, 2, 3]]))
    )


def test_a_cold_item_is_embedded_from_its_content() -> None:
    model = _model()
    shared = moved_shared(model, 0.2)
    ids = dict(zip(model.shared_names(), shared, strict=True))
    ids["item_ids.weight"][7] = 0.0  # item 7 never trained: its id row is the initial zero
    emb, _ = model.item_embeddings(list(ids.values()))
    assert torch.linalg.vector_norm(emb[7]) > 0
    without = build_model(
        "sequential", {**model.settings.model_dump(), "content": False}, _catalog()
    )
    assert "content_out.weight" not in without.shared_names()


def _serving_device(
    tmp_path, model: Sequential, shared, pipeline: PipelineSettings | None = None
) -> Device:
    """A new device with a signed release of ``shared`` applied (retrieval only unless
    ``pipeline`` says otherwise)."""
    release, public = publish_signed(tmp_path, model, shared)
    device = Device.open(
        tmp_path / "device",
        key=generate_key(),
        release_key=public,
        pipeline=pipeline or PipelineSettings.retrieval_only(),
    )
    device.apply_release(release)
    return device


def test_a_device_recomputes_its_user_vector_on_every_event(tmp_path) -> None:
    model = _model(max_history=3)
    shared = moved_shared(model, 0.2)
    with _serving_device(tmp_path, model, shared) as device:
        assert device.release.model == "sequential"
        assert all(r.source == "popular" for r in device.recommend(5))
        seen = []
        for at, item in enumerate([3, 8, 11, 20, 5]):
            device.record(f"m{item}", "view", at=float(at))
            seen.append(item)
            want = model.scores(shared, _inputs([seen]))[0]  # the batched path
            want[seen] = -np.inf
            got = [r.item for r in device.recommend(5)]
            assert got == [f"m{i}" for i in torch.topk(want, 5).indices]
        serving = model.serving(shared)
        torch.testing.assert_close(
            torch.from_numpy(serving.user(np.array(seen), None)),
            model.user_embeddings(shared, _inputs([seen]))[0],
        )
        # only the last max_history items count
        torch.testing.assert_close(
            model.scores(shared, _inputs([[3, 8, 11, 20, 5]])),
            model.scores(shared, _inputs([[11, 20, 5]])),
        )


def test_a_repeated_event_moves_the_item_to_the_end_of_the_sequence(tmp_path) -> None:
    model = _model()
    shared = moved_shared(model, 0.2)
    with _serving_device(tmp_path, model, shared) as device:
        for at, item in enumerate([3, 8, 11]):
            device.record(f"m{item}", "view", at=float(at))
        device.record("m3", "view", at=10.0)  # played again: now the latest
        np.testing.assert_array_equal(device.history_indices(), [8, 11, 3])
        want = model.scores(shared, _inputs([[8, 11, 3]]))[0]
        want[[3, 8, 11]] = -np.inf
        got = [r.item for r in device.recommend(5)]
        assert got == [f"m{i}" for i in torch.topk(want, 5).indices]


def test_the_whole_pipeline_serves_a_sequential_release(tmp_path) -> None:
    """The model is the pipeline's collaborative candidate generator and its score a
    ranker feature, as MF's is: the default pipeline fuses its candidates with the rest."""
    model = _model()
    shared = moved_shared(model, 0.2)
    with _serving_device(tmp_path, model, shared, PipelineSettings()) as device:
        for at, item in enumerate([3, 8, 11, 20]):
            device.record(f"m{item}", "view", at=float(at))
        got = device.recommend(8)
        assert len(got) == 8 and not {r.item for r in got} & {"m3", "m8", "m11", "m20"}
        assert "cf" in {r.source for r in got}
