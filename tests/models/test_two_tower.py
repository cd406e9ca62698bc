"""The two-tower model: towers, padding masks, the log-Q corrected loss against a slow
reference, content embeddings of brand-new items, and serving on a device."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest
import torch
from helpers.signed_releases import film_release, publish_signed
from helpers.updates import moved_shared

from stamen.client import ForeignReleaseError
from stamen.client.device.device import Device
from stamen.client.pipeline.recommend import PipelineSettings
from stamen.models import ReleaseCatalog, UserItems
from stamen.models.registry import DeviceInputs, build_model
from stamen.models.two_tower.context import (
    UNKNOWN_CONTEXT,
    UNKNOWN_WEEKDAY,
    context_row,
    timestamp_contexts,
)
from stamen.models.two_tower.features import feature_width, item_features
from stamen.models.two_tower.model import TwoTower, padded_histories
from stamen.models.two_tower.sampled_softmax import full_softmax_loss, sampled_softmax_loss
from stamen.privacy import generate_key

N_ITEMS = 40

#: The release model's own order: these tests check the scorer, not the re-ranker.
RETRIEVAL = PipelineSettings.retrieval_only()


def _catalog(n: int = N_ITEMS, genres=None) -> ReleaseCatalog:
    genres = genres or [["Action"] if i % 2 else ["Romance"] for i in range(n)]
    return ReleaseCatalog.build(
        [f"m{i}" for i in range(n)],
        titles=[f"{'Die Hard' if i % 2 else 'Love Story'} {i} ({1990 + i % 10})" for i in range(n)],
        genres=genres,
        year=[1990 + i % 10 for i in range(n)],
    )


def _model(**settings) -> TwoTower:
    base = {"dim": 8, "hidden": 16, "negatives": 0}
    return build_model("two-tower", {**base, **settings}, _catalog())  # type: ignore[return-value]


def _inputs(rows: list[list[int]], **kw) -> DeviceInputs:
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    items = np.array([i for r in rows for i in r], np.int64)
    history = UserItems(indptr=indptr, items=items, n_items=N_ITEMS)
    return DeviceInputs(history=history, seeds=np.arange(len(rows), dtype=np.uint64), **kw)


def test_features_come_from_the_catalogue_alone() -> None:
    catalog = _catalog()
    features = item_features(catalog, title_buckets=32)
    assert features.shape == (N_ITEMS, feature_width(len(catalog.genre_names), 32))
    np.testing.assert_allclose(features[0], item_features(catalog, title_buckets=32)[0])
    # items 1 and 3 share genre, decade and title words, item 2 shares none of them
    assert np.allclose(features[1, :2], features[3, :2])
    assert not np.allclose(features[1, :2], features[2, :2])


def test_left_padding_and_masks() -> None:
    history = UserItems.from_pairs(
        np.array([0, 0, 0, 1]), np.array([5, 6, 7, 9]), n_users=3, n_items=N_ITEMS
    )
    items, mask = padded_histories(history, 2)
    np.testing.assert_array_equal(items, [[6, 7], [0, 9], [0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1], [0, 1], [0, 0]])


@pytest.mark.parametrize("tower", ["mean", "sequence"])
def test_padding_never_changes_a_users_scores(tower) -> None:
    """A short history scores the same alone and padded next to a long one."""
    model = _model(user_tower=tower, max_history=6)
    shared = moved_shared(model, 0.1)
    together = model.scores(shared, _inputs([[1, 2], [3, 4, 5, 6, 7, 8]]))
    alone = model.scores(shared, _inputs([[1, 2]]))
    torch.testing.assert_close(together[0], alone[0], atol=1e-5, rtol=1e-5)


def test_sequence_tower_is_causal_and_mean_tower_leaves_the_target_out() -> None:
    for tower in ("mean", "sequence"):
        model = _model(user_tower=tower)
        params = {
            name: torch.as_tensor(a)
            for name, a in zip(model.shared_names(), moved_shared(model, 0.1), strict=True)
        }
        items = torch.tensor([0, 0, 3, 4, 5, 6])
        mask = torch.tensor([0.0, 0.0, 1, 1, 1, 1])
        emb = torch.randn(6, 8)
        users, targets, valid = torch.func.functional_call(
            model.net, params, ("examples", emb, items, mask, torch.zeros(0), torch.zeros(0))
        )
        changed = emb.clone()
        changed[4] += 1.0  # the embedding of item 5, at position 4
        users2, _, _ = torch.func.functional_call(
            model.net, params, ("examples", changed, items, mask, torch.zeros(0), torch.zeros(0))
        )
        if tower == "mean":  # the example predicting item 5 never sees item 5
            np.testing.assert_array_equal(targets.numpy(), items.numpy())
            torch.testing.assert_close(users[4], users2[4])
            assert not torch.allclose(users[5], users2[5])
            np.testing.assert_array_equal(valid.numpy(), mask.numpy())
        else:  # position t predicts item t+1 from items <= t only
            np.testing.assert_array_equal(targets.numpy(), items[1:].numpy())
            torch.testing.assert_close(users[:4], users2[:4])  # predict items up to 5
            assert not torch.allclose(users[4], users2[4])
            np.testing.assert_array_equal(valid.numpy(), [0, 0, 1, 1, 1])


def _slow_sampled_softmax(
    users, t_emb, t_bias, t_logq, targets, mask, n_emb, n_bias, n_logq, negs, in_batch
):
    total, count = 0.0, 0
    for e in range(len(targets)):
        if mask[e] == 0:
            continue
        u = users[e].tolist()

        def logit(v, b, lq, u=u):
            return sum(a * c for a, c in zip(u, v.tolist(), strict=True)) + float(b) - float(lq)

        positive = logit(t_emb[e], t_bias[e], t_logq[e])
        logits = [positive]
        for j in range(len(negs)):
            if int(negs[j]) != int(targets[e]):
                logits.append(logit(n_emb[j], n_bias[j], n_logq[j]))
        if in_batch:
            for f in range(len(targets)):
                if f != e and mask[f] > 0 and int(targets[f]) != int(targets[e]):
                    logits.append(logit(t_emb[f], t_bias[f], t_logq[f]))
        top = max(logits)
        total += top + math.log(sum(math.exp(v - top) for v in logits)) - positive
        count += 1
    return total / count


@pytest.mark.parametrize("in_batch", [False, True])
def test_log_q_corrected_sampled_softmax_matches_a_slow_reference(in_batch) -> None:
    g = torch.Generator().manual_seed(0)
    e, n, d = 6, 9, 4
    users = torch.randn(e, d, generator=g, dtype=torch.float64)
    targets = torch.tensor([3, 5, 3, 7, 1, 2])
    negatives = torch.tensor([3, 4, 8, 9, 1, 0, 11, 12, 13])  # 3 and 1: accidental hits
    t_emb = torch.randn(e, d, generator=g, dtype=torch.float64)
    n_emb = torch.randn(n, d, generator=g, dtype=torch.float64)
    t_bias, n_bias = torch.randn(e, generator=g).double(), torch.randn(n, generator=g).double()
    t_logq = torch.log(torch.rand(e, generator=g).double())
    n_logq = torch.log(torch.rand(n, generator=g).double())
    mask = torch.tensor([1.0, 1, 1, 0, 1, 1], dtype=torch.float64)
    args = (users, t_emb, t_bias, t_logq, targets, mask, n_emb, n_bias, n_logq, negatives)
    got = float(sampled_softmax_loss(*args, in_batch=in_batch))
    assert got == pytest.approx(_slow_sampled_softmax(*args, in_batch), rel=1e-10)
    # the correction matters: a non-uniform proposal changes the loss
    flat = (
        *args[:3],
        torch.zeros(e, dtype=torch.float64),
        *args[4:8],
        torch.zeros(n).double(),
        args[9],
    )
    assert float(sampled_softmax_loss(*flat, in_batch=in_batch)) != pytest.approx(got)


def test_full_softmax_is_cross_entropy_over_the_catalogue() -> None:
    g = torch.Generator().manual_seed(1)
    users, items = torch.randn(5, 3, generator=g), torch.randn(11, 3, generator=g)
    bias, targets = torch.randn(11, generator=g), torch.tensor([0, 4, 4, 10, 2])
    mask = torch.tensor([1.0, 1, 0, 1, 1])
    logits = users @ items.T + bias
    per = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    want = (per * mask).sum() / mask.sum()
    torch.testing.assert_close(full_softmax_loss(users, items, bias, targets, mask), want)


def test_a_brand_new_item_is_embedded_from_its_content_alone() -> None:
    """Content-only tower: people who only ever watch Action films are shown a new Action
    film (never trained on, no interactions) above a new Romance film."""
    n = N_ITEMS
    model = _model(item_ids=False, local_lr=0.5)
    shared = model.init_shared(0)
    trained = np.arange(n - 4)  # items n-4 .. n-1 are brand new
    action = trained[trained % 2 == 1]
    rng = np.random.default_rng(0)
    rows = [list(rng.choice(action, size=5, replace=False)) for _ in range(16)]
    for _ in range(40):  # FedAvg: the mean of the devices' updates
        updates = model.device_updates(shared, _inputs(rows))
        shared = [a + d.mean(0) for a, d in zip(shared, updates.deltas, strict=True)]
    emb, _ = model.item_embeddings(shared)
    new_action, new_romance = n - 3, n - 4
    assert float(emb[new_action].norm()) > 0.1
    scores = model.scores(shared, _inputs([rows[0]]))[0]
    assert scores[new_action] > scores[new_romance]


def test_user_attributes_stay_inputs_of_the_user_tower() -> None:
    model = _model(attribute_width=3)
    shared = moved_shared(model, 0.1)
    a = model.scores(shared, _inputs([[1, 2]], attributes=np.array([[1.0, 0, 0]])))
    b = model.scores(shared, _inputs([[1, 2]], attributes=np.array([[0.0, 1, 0]])))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="attributes"):
        model.scores(shared, _inputs([[1, 2]]))


def test_a_device_serves_a_two_tower_release_and_updates_on_every_event(tmp_path) -> None:
    model = _model(user_tower="sequence")
    shared = moved_shared(model, 0.1)
    release, public = publish_signed(tmp_path, model, shared)
    with Device.open(
        tmp_path / "device", key=generate_key(), release_key=public, pipeline=RETRIEVAL
    ) as device:
        device.apply_release(release)
        assert device.release.model == "two-tower"
        with pytest.raises(ForeignReleaseError, match="'mf' release, where this device serves"):
            device.apply_release(film_release(tmp_path, 2))  # same publisher key, other model
        assert device.release.model == "two-tower" and device.release.number == 1
        cold = [r.item for r in device.recommend(5)]
        assert all(r.source == "popular" for r in device.recommend(5))
        device.record("m3", "view", at=1.0)
        first = device.recommend(5)
        device.record("m8", "view", at=2.0)
        second = device.recommend(5)
        np.testing.assert_array_equal(device.history_indices(), [3, 8])
        want = model.scores(shared, _inputs([[3, 8]]))[0]
        want[[3, 8]] = -np.inf
        assert [r.item for r in second] == [f"m{i}" for i in torch.topk(want, 5).indices]
        assert [r.item for r in first] != [r.item for r in second]
        assert cold != [r.item for r in second]


def test_contexts_of_timestamps_are_utc_hour_and_weekday() -> None:
    stamps = np.array([0, 3600 * 13 + 59, 86_400 * 4 - 1, 1_700_000_000, -1])
    want = [(d.hour, d.weekday()) for d in (datetime.fromtimestamp(int(t), tz=UTC) for t in stamps)]
    assert timestamp_contexts(stamps).tolist() == [list(w) for w in want]
    assert context_row({"hour": 5}, at=None).tolist() == [5, UNKNOWN_WEEKDAY]
    assert context_row(None).tolist() == list(UNKNOWN_CONTEXT)


def test_the_context_term_learns_from_each_target_events_context_only() -> None:
    """Training examples carry their target event's context: the mean tower's update
    touches the hour and weekday rows of the history's events, the sequence tower's those
    of every event but the first (never a target); none of it is hidden at dropout 0."""
    rows = [[1, 2, 3]]
    contexts = np.array([[4, 0], [9, 1], [9, 2]])
    for tower, hours, weekdays in (("mean", {4, 9}, {0, 1, 2}), ("sequence", {9}, {1, 2})):
        model = _model(user_tower=tower, context=True, context_dropout=0.0, max_history=5)
        names = model.shared_names()
        inputs = _inputs(rows)
        inputs = DeviceInputs(
            history=UserItems(
                indptr=inputs.history.indptr,
                items=inputs.history.items,
                n_items=N_ITEMS,
                contexts=contexts,
            ),
            seeds=inputs.seeds,
        )
        deltas = model.device_updates(moved_shared(model, 0.1), inputs).device(0)
        touched = {
            name: set(np.flatnonzero(np.abs(d).sum(1) > 0).tolist())
            for name, d in zip(names, deltas, strict=True)
            if name in ("hours.weight", "weekdays.weight")
        }
        assert touched == {"hours.weight": hours, "weekdays.weight": weekdays}


def test_a_device_scores_with_the_request_context(tmp_path) -> None:
    """The device adds the request's context term to the user vector: its list is the
    batch scorer's for that context, and an hour the model learned differently changes it."""
    model = _model(context=True)
    shared = moved_shared(model, 0.1, seed=4)
    release, public = publish_signed(tmp_path, model, shared)
    with Device.open(
        tmp_path / "device", key=generate_key(), release_key=public, pipeline=RETRIEVAL
    ) as device:
        device.apply_release(release)
        device.record("m3", "view", at=1.0, context={"hour": 8, "weekday": 2})
        device.record("m8", "view", at=2.0)
        np.testing.assert_array_equal(device.history_contexts(), [[8, 2], list(UNKNOWN_CONTEXT)])
        lists = {}
        for hour in (2, 20):
            got = device.recommend(8, context={"hour": hour, "weekday": 5})
            want = model.scores(shared, _inputs([[3, 8]], query=np.array([[hour, 5]])))[0]
            want[[3, 8]] = -np.inf
            assert [r.item for r in got] == [f"m{i}" for i in torch.topk(want, 8).indices]
            np.testing.assert_allclose(
                [r.scores["cf"] for r in got], torch.topk(want, 8).values, rtol=1e-5, atol=1e-5
            )
            lists[hour] = [r.item for r in got]
        assert lists[2] != lists[20]
