"""The federated ranker: its features on a hand-built request, its device step, what it
starts as, that federated training learns a signal the features carry (and reports its
ε under DP), and that it travels in a signed release to a device, which trains from its
own replayed history."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from stamen.client.device.device import Device
from stamen.client.pipeline.candidates import ReleaseIndex, Request, generate
from stamen.client.pipeline.ranking import candidate_features
from stamen.client.pipeline.recommend import PipelineSettings, offered_example, run_pipeline
from stamen.errors import BundleError
from stamen.models import LocalSettings, ReleaseBundle, ReleaseCatalog
from stamen.models.mf.model import MFModel
from stamen.models.ranker.model import RankingExamples, ranker_updates
from stamen.models.ranker.settings import RankerSettings
from stamen.models.ranker.weights import FEATURES, init_ranker, ranker_scores
from stamen.privacy import generate_key, generate_signing_key, open_signed
from stamen.server import ReleaseWriter
from stamen.server.settings import ServerSettings
from stamen.simulation.engines.ranker import gather_examples, train_ranker

DAY = 86400.0
NOW = 1000 * DAY
COL = {name: i for i, name in enumerate(FEATURES)}

CATALOG = ReleaseCatalog.build(
    [f"i{r}" for r in range(6)],
    titles=[f"Title {r}" for r in range(6)],
    genres=[("Sci-Fi",), ("Sci-Fi", "Drama"), ("Drama",), ("Drama",), ("Comedy",), ()],
    first_seen=[NOW - 400 * DAY, NOW - 2 * DAY, NOW - 30 * DAY, -1, NOW - 1 * DAY, NOW - 9 * DAY],
)


def _request(**kw) -> Request:
    values = dict(
        index=ReleaseIndex(CATALOG, np.array([6.0, 5, 4, 3, 2, 1]), np.array([0.0, 9, 0, 3, 0, 0])),
        cf_scores=np.array([0.1, 0.9, 0.5, 0.7, 0.3, 0.2]),
        history=np.array([0]),
        history_at=np.array([NOW]),
        rejected=np.zeros(0, np.int64),
        rejected_at=np.zeros(0),
        excluded=np.array([0]),
        now=NOW,
        context={"hour": 6, "weekday": 0, "device": "tv"},
    )
    values.update(kw)
    return Request(**values)


def test_features_of_a_hand_built_request() -> None:
    request = _request()
    candidates = generate(request, {"cf": 3, "trending": 5, "fresh": 1})
    assert candidates.rows.tolist() == [1, 3, 2, 4]  # cf 1, 3, 2; trending 1, 3; fresh 4
    x = candidate_features(candidates, request)
    assert x.shape == (4, len(FEATURES)) and x.dtype == np.float32
    assert x[:, COL["proposed:cf"]].tolist() == [1, 1, 1, 0]
    assert x[:, COL["proposed:trending"]].tolist() == [1, 1, 0, 0]
    assert x[:, COL["proposed:fresh"]].tolist() == [0, 0, 0, 1]  # item 4 is the newest
    np.testing.assert_allclose(x[:, COL["rank:cf"]], [*(1 / np.log2([2, 3, 4])), 0], rtol=1e-6)
    np.testing.assert_allclose(x[:, COL["rank:trending"]], [1, 1 / np.log2(3), 0, 0], rtol=1e-6)
    # the retrieval score of every candidate, whoever proposed it
    np.testing.assert_allclose(x[:, COL["cf_score"]], [0.9, 0.7, 0.5, 0.3], rtol=1e-6)
    z = x[:, COL["cf_z"]]
    assert abs(z.mean()) < 1e-6 and z.std() == pytest.approx(1, rel=1e-5)
    # profile = Sci-Fi (item 0): cosine 1/sqrt(2) with Sci-Fi/Drama, 0 with Drama
    np.testing.assert_allclose(x[:, COL["content"]], [2**-0.5, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(
        x[:, COL["trending"]], np.log1p([9, 3, 0, 0]) / np.log1p(9), rtol=1e-6
    )
    np.testing.assert_allclose(x[:, COL["popularity"]], [5, 3, 4, 2])
    assert x[:, COL["age_unknown"]].tolist() == [0, 1, 0, 0]  # item 3's first-seen is unknown
    np.testing.assert_allclose(
        x[[0, 2, 3], COL["age"]], np.log1p([2, 30, 1]) / np.log1p(3650), rtol=1e-6
    )
    assert x[0, COL["hour_sin"]] == pytest.approx(1) and x[0, COL["weekday_sin"]] == 0
    assert x[0, COL["device:tv"]] == 1
    assert x[0, COL["device:phone"]] == 0
    assert x[0, COL["history"]] == pytest.approx(np.log1p(1) / np.log1p(1000))
    # what the request leaves out comes from the device's clock at the request's time
    at_noon = candidate_features(candidates, _request(context={}, now=NOW + 12 * 3600))
    local = time.localtime(NOW + 12 * 3600)
    assert at_noon[0, COL["hour_cos"]] == pytest.approx(np.cos(2 * np.pi * local.tm_hour / 24))
    assert at_noon[0, COL["weekday_sin"]] == pytest.approx(np.sin(2 * np.pi * local.tm_wday / 7))
    assert at_noon[0, COL["device:tv"]] == 0
    # a subset standardises over itself
    assert candidate_features(candidates, request, np.array([2]))[0, COL["cf_z"]] == 0


@pytest.mark.parametrize("hidden", [0, 8])
def test_an_untrained_ranker_keeps_the_retrieval_order(hidden: int) -> None:
    rng = np.random.default_rng(0)
    n = 300
    catalog = ReleaseCatalog.build([f"i{r}" for r in range(n)], titles=[""] * n)
    request = Request(
        index=ReleaseIndex(catalog, rng.normal(size=n), None),
        cf_scores=rng.normal(size=n),
        history=np.array([3, 7]),
        history_at=np.array([NOW, NOW]),
        rejected=np.zeros(0, np.int64),
        rejected_at=np.zeros(0),
        excluded=np.array([3, 7]),
        now=NOW,
        context={},
    )
    settings = PipelineSettings(mmr_lambda=1.0)
    kw = dict(vectors=lambda r: np.ones((len(r), 2)), because=lambda r: [""] * len(r))
    kw |= dict(blocked=np.zeros(0, np.int64), region=None, rng=None)
    plain = run_pipeline(request, settings, 20, **kw)
    ranked = run_pipeline(
        request, settings, 20, ranker=init_ranker(RankerSettings(hidden=hidden), 0), **kw
    )
    assert [p.row for p in ranked] == [p.row for p in plain]
    # a ranker that prefers the opposite reorders the head (and only the head)
    weights = init_ranker(RankerSettings(hidden=0), 0)
    weights[0] = -weights[0]
    small = settings.model_copy(update={"ranker_depth": 5})
    flipped = run_pipeline(request, small, 8, ranker=weights, **kw)
    top = [p.row for p in run_pipeline(request, small, 8, **kw)]
    assert [p.row for p in flipped] == top[:5][::-1] + top[5:]


def _examples(n_devices: int, seed: int, n: int = 20) -> RankingExamples:
    """Lists where the taken candidate is the one of highest ``content``; the retrieval
    score the ranker starts from is noise."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n_devices):
        x = np.zeros((n, len(FEATURES)), np.float32)
        x[:, COL["cf_z"]] = rng.normal(size=n)
        x[:, COL["content"]] = rng.uniform(size=n)
        pairs.append((x, x[:, COL["content"]] == x[:, COL["content"]].max()))
    return RankingExamples.stack(pairs)


def _top1(weights: list[np.ndarray], examples: RankingExamples) -> float:
    return float(
        np.mean(
            [
                t[np.argmax(ranker_scores(weights, x))]
                for x, t in zip(examples.features, examples.taken, strict=True)
            ]
        )
    )


def test_device_step_is_the_same_alone_and_in_a_batch() -> None:
    settings = RankerSettings(hidden=4)
    weights = [w + 0.1 for w in init_ranker(settings, 0)]
    uneven = RankingExamples.stack(
        [
            (e[: 5 + 3 * d], t[: 5 + 3 * d])
            for d, (e, t) in enumerate(zip(*_stacked(4), strict=True))
        ]
    )
    batch, losses = ranker_updates(weights, uneven, settings)
    for d in range(4):
        alone, loss = ranker_updates(weights, uneven.select([d]), settings)
        for a, b in zip(alone, batch, strict=True):
            np.testing.assert_allclose(a[0], b[d], atol=1e-6)
        assert loss[0] == pytest.approx(losses[d], rel=1e-5)


def _stacked(n_devices: int) -> tuple[np.ndarray, np.ndarray]:
    examples = _examples(n_devices, 1)
    return examples.features, examples.taken


def test_federated_training_learns_what_the_features_carry() -> None:
    train, held_out = _examples(400, 0), _examples(200, 1)
    settings = ServerSettings(
        rounds=60, clients_per_round=40, evaluate=False, optimizer={"name": "fedavg", "lr": 1.0}
    )  # SecAgg+ quantisation on, as by default
    run = train_ranker(train, settings, RankerSettings(hidden=0, local_lr=0.5))
    start = init_ranker(RankerSettings(hidden=0), 0)
    # the start ranks by noise: about 1 list in 20 right; the taken item is a function of
    # one feature, so a ranker that learned it gets most lists right
    assert _top1(start, held_out) < 0.15
    assert _top1(run.weights, held_out) > 0.5
    assert run.loss_after < run.loss_before
    assert run.result.privacy is None


def test_user_level_dp_training_reports_its_epsilon() -> None:
    settings = ServerSettings(
        rounds=5,
        clients_per_round=50,
        evaluate=False,
        dp={"mode": "distributed", "target_epsilon": 4.0, "clip_norm": 0.5},
    )
    run = train_ranker(_examples(500, 0), settings, RankerSettings(hidden=2))
    privacy = run.result.privacy
    assert privacy is not None and 0 < privacy["epsilon"] <= 4.0
    assert privacy["delta"] == pytest.approx(1 / 500)
    assert all(r.privacy is not None for r in run.result.history)


def test_gather_examples_keeps_device_order_and_empty_lists() -> None:
    x = np.ones((3, len(FEATURES)), np.float32)
    examples, has = gather_examples([None, (x, np.array([False, True, False]))])
    assert has.tolist() == [False, True]
    assert examples.offered.sum(1).tolist() == [0, 3]
    deltas, _ = ranker_updates(
        init_ranker(RankerSettings(hidden=0), 0),
        examples,
        RankerSettings(hidden=0, weight_decay=0.0),
    )
    assert np.abs(deltas[0][0]).max() == 0  # an empty list learns nothing


def test_examples_refuse_a_taken_candidate_that_was_not_offered() -> None:
    with pytest.raises(ValueError, match="offered"):
        RankingExamples(
            np.zeros((1, 2, len(FEATURES)), np.float32),
            np.array([[True, False]]),
            np.array([[False, True]]),
        )


def test_a_release_carries_the_ranker_to_a_device_that_trains_from_its_history(
    tmp_path,
) -> None:
    n = 30
    catalog = ReleaseCatalog.build([f"i{r}" for r in range(n)], titles=[f"T{r}" for r in range(n)])
    private, public = generate_signing_key()
    model = MFModel(LocalSettings(dim=4), catalog)
    writer = ReleaseWriter(
        tmp_path / "releases", private_key=private, public_key=public, model=model
    )
    shared = [
        a + np.float32(0.01) * np.arange(a.size, dtype=np.float32).reshape(a.shape)
        for a in model.init_shared(0)
    ]
    weights = init_ranker(RankerSettings(hidden=3), 0)
    path = writer.publish(1, shared, ranker=weights)
    bundle = ReleaseBundle.decode(open_signed(path.read_bytes(), public_key=public))
    assert bundle.ranker is not None
    assert all(np.array_equal(a, b) for a, b in zip(bundle.ranker, weights, strict=True))
    with pytest.raises(BundleError, match="ranker"):
        ReleaseBundle(**{**bundle.__dict__, "ranker": (weights[0][:3], weights[1])})

    device = Device.open(tmp_path / "device", key=generate_key(), release_key=public)
    device.apply_release(path)
    assert device.ranking_example() is None  # no history yet
    for t, item in enumerate(["i1", "i2", "i3", "i4"]):
        device.record(item, "view", at=NOW + t, context={"hour": 9, "weekday": 2})
    device.pipeline = PipelineSettings(budgets={"cf": n})
    example = device.ranking_example()
    assert example is not None
    x, taken = example
    assert x.shape == (taken.size, len(FEATURES)) and taken.sum() == 1
    # the list is the one offered before the last item, from the history before it
    serving_rows = catalog.index_of(["i1", "i2", "i3"])
    assert x[0, COL["history"]] == pytest.approx(np.log1p(3) / np.log1p(1000))
    assert x[0, COL["hour_sin"]] == pytest.approx(np.sin(2 * np.pi * 9 / 24), abs=1e-6)
    assert taken.size == n - len(serving_rows)  # every other item was a candidate
    assert device.recommend(5, at=NOW + 10)  # the ranker serves
    with pytest.raises(ValueError):
        device.ranking_example(recent=0)
    device.close()


def test_offered_example_is_none_when_the_head_misses_the_taken_items() -> None:
    request = _request()
    settings = PipelineSettings(budgets={"cf": 2}, ranker_depth=2)
    assert offered_example(request, settings, np.array([5])) is None
    x, taken = offered_example(request, settings, np.array([3]))
    assert taken.tolist() == [False, True]
    assert torch.from_numpy(x).shape == (2, len(FEATURES))
