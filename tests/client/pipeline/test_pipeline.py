"""The on-device pipeline on hand-built cases: each candidate generator, the merge, each
re-ranking rule, MMR against a slow reference, exploration's propensities, the reasons."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import sparse

from stamen.client.pipeline.candidates import (
    GENERATORS,
    ReleaseIndex,
    Request,
    content_profile,
    generate,
    register_generator,
)
from stamen.client.pipeline.genre_matrix import GenreMatrix
from stamen.client.pipeline.recommend import PipelineSettings, fused_relevance, run_pipeline
from stamen.client.pipeline.rerank import rerank
from stamen.models.bundle import ReleaseCatalog

DAY = 86400.0
NOW = 1000 * DAY

# six items: two Sci-Fi, two Drama, one Comedy, one without genres
GENRES = [("Sci-Fi",), ("Sci-Fi", "Drama"), ("Drama",), ("Drama",), ("Comedy",), ()]
CATALOG = ReleaseCatalog.build(
    [f"i{r}" for r in range(6)],
    titles=[f"Title {r}" for r in range(6)],
    genres=GENRES,
    first_seen=[NOW - 400 * DAY, NOW - 2 * DAY, NOW - 30 * DAY, -1, NOW - 1 * DAY, NOW - 90 * DAY],
    regions=[(), ("DE",), (), ("US", "DE"), ("US",), ()],
)


def _request(popularity=(6.0, 5, 4, 3, 2, 1), trending=None, **kw) -> Request:
    values = dict(
        index=ReleaseIndex(CATALOG, np.array(popularity), trending),
        cf_scores=None,
        history=np.zeros(0, np.int64),
        history_at=np.zeros(0),
        rejected=np.zeros(0, np.int64),
        rejected_at=np.zeros(0),
        excluded=np.zeros(0, np.int64),
        now=NOW,
        context={},
    )
    values.update(kw)
    if "history" in kw and "history_at" not in kw:
        values["history_at"] = np.full(len(kw["history"]), NOW)
    if "rejected" in kw and "rejected_at" not in kw:
        values["rejected_at"] = np.full(len(kw["rejected"]), NOW)
    if "excluded" not in kw:
        values["excluded"] = np.union1d(values["history"], values["rejected"])
    return Request(**values)


def _rows(name: str, request: Request, budget: int = 10) -> list[int]:
    return GENERATORS[name](request, budget)[0].tolist()


# -- generators --------------------------------------------------------------------------


def test_cf_proposes_the_best_scores_outside_the_persons_items() -> None:
    request = _request(cf_scores=np.array([0.1, 0.9, 0.5, 0.7, 0.3, 0.2]), history=np.array([1]))
    assert _rows("cf", request, 3) == [3, 2, 4]
    assert _rows("cf", _request()) == []  # no user vector: nothing


def test_content_matches_the_recency_weighted_profile_minus_rejections() -> None:
    # item 0 (Sci-Fi) consumed now, item 2 (Drama) long ago: Sci-Fi items first
    request = _request(history=np.array([0, 2]), history_at=np.array([NOW, NOW - 300 * DAY]))
    rows, scores = GENERATORS["content"](request, 10)
    assert rows[0] == 1 and set(rows) == {1, 3}  # Comedy and the genre-less item share nothing
    assert np.all(np.diff(scores) <= 0)
    # the same history with the Drama item the recent one: Drama first
    request = _request(history=np.array([0, 2]), history_at=np.array([NOW - 300 * DAY, NOW]))
    assert _rows("content", request)[0] == 3
    # a Sci-Fi/Drama item consumed matches both; rejecting a Drama item leaves Sci-Fi only
    assert set(_rows("content", _request(history=np.array([1])))) == {0, 2, 3}
    assert _rows("content", _request(history=np.array([1]), rejected=np.array([2]))) == [0]


def _random_request(seed: int, n_items: int = 300, n_genres: int = 6) -> Request:
    rng = np.random.default_rng(seed)
    names = [f"g{g}" for g in range(n_genres)]
    genres = [
        tuple(rng.choice(names, size=rng.integers(0, 4), replace=False)) for _ in range(n_items)
    ]
    ids = [f"i{r}" for r in range(n_items)]
    catalog = ReleaseCatalog.build(ids, titles=ids, genres=genres)
    history = rng.choice(n_items, size=rng.integers(1, 30), replace=False)
    rejected = np.setdiff1d(rng.choice(n_items, size=5, replace=False), history)
    return Request(
        index=ReleaseIndex(catalog, np.zeros(n_items), None),
        cf_scores=rng.normal(size=n_items).round(1),  # ties, broken by row
        history=history,
        history_at=NOW - rng.uniform(0, 200 * DAY, len(history)),
        rejected=rejected,
        rejected_at=np.full(len(rejected), NOW),
        excluded=np.union1d(history, rejected),
        now=NOW,
        context={},
    )


def _slow_top(scores: np.ndarray, budget: int, excluded: np.ndarray) -> list[int]:
    """Every row scored, the excluded and non-positive-or-non-finite left out, best first,
    ties by row."""
    ranked = sorted(
        (-scores[r], r)
        for r in range(len(scores))
        if r not in set(excluded) and np.isfinite(scores[r])
    )
    return [r for _, r in ranked[:budget]]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("budget", [1, 7, 40, 400])
def test_content_and_cf_match_a_slow_per_item_reference(seed: int, budget: int) -> None:
    """The content generator scores genre groups, not items, and cf takes a partial sort:
    both propose exactly what scoring every item and sorting gives."""
    request = _random_request(seed)
    index = request.index
    profile = content_profile(request)
    dense = np.zeros(index.genres.shape)
    for r in range(len(dense)):
        dense[r, index.genres.row(r)] = 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = dense @ profile / (np.sqrt(dense.sum(axis=1)) * np.linalg.norm(profile))
    cosine = np.where(cosine > 0, cosine, -np.inf)
    rows, scores = GENERATORS["content"](request, budget)
    assert rows.tolist() == _slow_top(cosine, budget, request.excluded)
    assert np.allclose(scores, cosine[rows])
    rows, _ = GENERATORS["cf"](request, budget)
    assert rows.tolist() == _slow_top(request.cf_scores, budget, request.excluded)


def test_trending_needs_the_releases_counts() -> None:
    assert _rows("trending", _request()) == []
    counts = np.array([0.0, 5, 0, 9, 1, 0])
    assert _rows("trending", _request(trending=counts, history=np.array([3]))) == [1, 4]


def test_fresh_proposes_the_newest_known_items() -> None:
    assert _rows("fresh", _request(), 3) == [4, 1, 2]  # item 3's first-seen time is unknown
    assert 3 not in _rows("fresh", _request(), 10)


def test_popular_is_the_fallback_for_a_person_with_no_history() -> None:
    assert _rows("popular", _request(rejected=np.array([0])), 2) == [1, 2]
    assert _rows("popular", _request(history=np.array([0]))) == []


def test_generate_merges_deduplicates_and_remembers_who_proposed_what() -> None:
    request = _request(cf_scores=np.array([0.1, 0.9, 0.5, 0.7, 0.3, 0.2]), history=np.array([0]))
    merged = generate(request, {"cf": 2, "fresh": 2})
    assert merged.rows.tolist() == [1, 3, 4]  # cf's 1, 3, then fresh's 4 (1 already there)
    assert merged.proposals(0) == {"cf": pytest.approx(0.9), "fresh": NOW - 2 * DAY}
    assert merged.proposals(2) == {"fresh": NOW - 1 * DAY}
    assert merged.proposed("cf").tolist() == [True, True, False]
    with pytest.raises(ValueError, match="unknown candidate generators"):
        generate(request, {"nope": 3})


def test_a_new_generator_plugs_in_through_the_registry() -> None:
    @register_generator("test-last-item")
    def _last(request: Request, budget: int):
        return np.array([5]), np.array([1.0])

    try:
        settings = PipelineSettings(budgets={"test-last-item": 1})
        picks = _run(_request(), settings, 3)
        assert [p.row for p in picks] == [5] and picks[0].source == "test-last-item"
        with pytest.raises(ValueError, match="already registered"):
            register_generator("test-last-item")(_last)
    finally:
        del GENERATORS["test-last-item"]


# -- re-ranking rules --------------------------------------------------------------------


def _run(request: Request, settings: PipelineSettings, k: int, **kw):
    defaults = dict(
        vectors=lambda rows: np.eye(6)[rows],
        because=lambda rows: [f"Because of {r}" for r in rows],
        blocked=np.zeros(0, np.int64),
        region=None,
        rng=np.random.default_rng(0),
    )
    defaults.update(kw)
    return run_pipeline(request, settings, k, **defaults)


ALL = PipelineSettings(budgets={"popular": 6}, mmr_lambda=1.0)


def test_a_blocked_item_never_appears() -> None:
    picks = _run(_request(), ALL, 6, blocked=np.array([0, 4]))
    assert [p.row for p in picks] == [1, 2, 3, 5]


def test_an_item_unavailable_in_the_region_never_appears() -> None:
    assert [p.row for p in _run(_request(), ALL, 6, region="US")] == [0, 2, 3, 4, 5]
    assert [p.row for p in _run(_request(), ALL, 6, region="FR")] == [0, 2, 5]
    assert len(_run(_request(), ALL, 6, region=None)) == 6


def test_the_genre_cap_holds() -> None:
    settings = PipelineSettings(budgets={"popular": 6}, mmr_lambda=1.0, genre_cap=1)
    picks = _run(_request(), settings, 6)
    assert [p.row for p in picks] == [0, 2, 4, 5]  # one Sci-Fi, one Drama, one Comedy, none
    for genre in ("Sci-Fi", "Drama", "Comedy"):
        assert sum(genre in GENRES[p.row] for p in picks) <= 1


def test_the_freshness_boost_lifts_items_inside_the_launch_window() -> None:
    settings = PipelineSettings(budgets={"popular": 6}, mmr_lambda=1.0, freshness_boost=1.0)
    picks = _run(_request(), settings, 6)
    assert [p.row for p in picks][:2] == [1, 4]  # first seen 2 and 1 days ago


def _mmr_reference(relevance, vectors, k, lam):
    """MMR as Carbonell and Goldstein wrote it, one candidate at a time."""
    rel = [r / max(abs(x) for x in relevance) for r in relevance]
    unit = [v / np.linalg.norm(v) for v in vectors]
    chosen: list[int] = []
    while len(chosen) < min(k, len(rel)):
        best, best_value = None, -np.inf
        for i in range(len(rel)):
            if i in chosen:
                continue
            similarity = max((float(unit[i] @ unit[j]) for j in chosen), default=0.0)
            value = lam * rel[i] - (1 - lam) * similarity
            if value > best_value:
                best, best_value = i, value
        chosen.append(best)
    return chosen


def _mmr(relevance: np.ndarray, vectors, k: int, lam: float) -> list[int]:
    """The candidates ``rerank`` picks by MMR alone: all allowed, no genres, none fresh."""
    n = len(relevance)
    slots = rerank(
        relevance,
        vectors,
        k,
        allowed=np.ones(n, bool),
        genres=[()] * n,
        fresh=np.zeros(n, bool),
        lam=lam,
    )
    return [s.candidate for s in slots]


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.7, 1.0])
def test_mmr_matches_the_slow_reference(lam) -> None:
    rng = np.random.default_rng(int(lam * 10))
    relevance, vectors = rng.random(40), rng.normal(size=(40, 5))
    assert _mmr(relevance, vectors, 12, lam) == _mmr_reference(relevance, vectors, 12, lam)
    # wide, sparse vectors (tags) over the columns they use give the list their full form
    tags = sparse.random(40, 300, density=0.02, random_state=int(lam * 10), format="csr")
    compact = GenreMatrix(tags.indptr, tags.indices, 300).dense()
    assert compact.shape[1] < 300
    assert _mmr(relevance, compact, 12, lam) == _mmr(relevance, tags.toarray() != 0, 12, lam)


def test_mmr_over_many_candidates_takes_cosines_per_pick_and_matches_the_reference(
    monkeypatch,
) -> None:
    # a pipeline widened to a large catalogue must not build an n × n cosine matrix (at
    # 100,000 candidates: 75 GiB); above the pairwise limit each pick's cosines are taken
    import tracemalloc

    from stamen.client.pipeline import rerank as rerank_module

    rng = np.random.default_rng(3)
    relevance, vectors = rng.random(120), rng.normal(size=(120, 6))
    monkeypatch.setattr(rerank_module, "_PAIRWISE_AT_MOST", 50)
    picks = _mmr(relevance, vectors, 15, 0.6)
    assert picks == _mmr_reference(relevance, vectors, 15, 0.6)
    monkeypatch.undo()
    assert _mmr(relevance, vectors, 15, 0.6) == picks  # the pairwise matrix agrees
    n = 6000  # a pairwise matrix of float64 cosines would be 275 MiB
    relevance, vectors = rng.random(n), rng.normal(size=(n, 6))
    tracemalloc.start()
    try:
        assert len(_mmr(relevance, vectors, 30, 0.6)) == 30
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < n * n * 8 / 4


def test_mmr_diversifies_a_list_of_near_duplicates() -> None:
    vectors = np.array([[1.0, 0], [1.0, 0.01], [0, 1.0]])
    relevance = np.array([1.0, 0.99, 0.5])
    assert _mmr(relevance, vectors, 2, lam=1.0) == [0, 1]
    assert _mmr(relevance, vectors, 2, lam=0.5) == [0, 2]


# -- exploration -------------------------------------------------------------------------


def test_no_exploration_is_deterministic_with_propensity_one() -> None:
    settings = PipelineSettings(budgets={"popular": 6}, explore=0.0)
    lists = {
        tuple(p.row for p in _run(_request(), settings, 4, rng=np.random.default_rng(s)))
        for s in range(5)
    }
    assert len(lists) == 1
    assert all(p.propensity == 1.0 for p in _run(_request(), settings, 4))


def test_full_exploration_follows_its_logged_propensities() -> None:
    settings = PipelineSettings(budgets={"popular": 6}, mmr_lambda=1.0, explore=1.0)
    rng = np.random.default_rng(0)
    first = np.zeros(6)
    draws = 3000
    for _ in range(draws):
        picks = _run(_request(), settings, 3, rng=rng)
        # slot j draws uniformly among the 6 - j items left
        assert [p.propensity for p in picks] == pytest.approx([1 / 6, 1 / 5, 1 / 4])
        first[picks[0].row] += 1
        assert all(p.source == "explore" or p.row == 0 for p in picks[:1])
    # each item leads the list with the logged probability 1/6 (4 standard errors)
    assert np.all(np.abs(first / draws - 1 / 6) < 4 * np.sqrt((1 / 6) * (5 / 6) / draws))


def test_exploration_rate_mixes_greedy_and_uniform_propensities() -> None:
    settings = PipelineSettings(budgets={"popular": 6}, mmr_lambda=1.0, explore=0.5)
    explored = 0
    for seed in range(50):
        for slot, p in enumerate(_run(_request(), settings, 2, rng=np.random.default_rng(seed))):
            left = 6 - slot  # eligible items at this slot
            if p.source == "explore":  # drawn uniformly, not the greedy item
                assert p.propensity == pytest.approx(0.5 / left)
                explored += 1
            else:  # the greedy item: chosen greedily or drawn
                assert p.propensity == pytest.approx(0.5 + 0.5 / left)
    assert 0 < explored < 100


# -- relevance and reasons -----------------------------------------------------------------


def test_rank_fusion_rewards_items_several_generators_propose() -> None:
    request = _request(
        cf_scores=np.array([0.1, 0.9, 0.5, 0.7, 0.3, 0.2]),
        history=np.array([0]),
        trending=np.array([0.0, 0, 0, 1, 9, 0]),
    )
    merged = generate(request, {"cf": 3, "trending": 2})
    relevance = dict(zip(merged.rows.tolist(), fused_relevance(merged, 60.0), strict=True))
    # item 3: cf's second and trending's second beats item 1: cf's first alone
    assert relevance[3] > relevance[1] > relevance[2]


def test_every_pick_carries_the_reason_of_the_stage_that_earned_it() -> None:
    request = _request(
        cf_scores=np.array([0.1, 0.2, 0.9, 0.2, 0.0, 0.0]),
        history=np.array([0]),
        trending=np.array([0.0, 0, 0, 0, 0, 7]),
    )
    settings = PipelineSettings(
        budgets={"cf": 1, "content": 2, "trending": 1, "fresh": 1}, mmr_lambda=1.0
    )
    picks = {p.row: p for p in _run(request, settings, 4)}  # what the budgets propose
    assert picks[2].source == "cf" and picks[2].reason == "Because of 2"
    assert picks[5].source == "trending" and picks[5].reason == "Popular this week"
    assert picks[4].source == "fresh" and picks[4].reason == "New this week"
    assert picks[1].source == "content" and picks[1].reason == "Matches your interest in Sci-Fi"
    explored = _run(request, settings.model_copy(update={"explore": 1.0}), 4)
    assert all(p.reason == "Something different" for p in explored if p.source == "explore")


def test_k_beyond_the_budgets_widens_them_to_every_eligible_item() -> None:
    request = _request(cf_scores=np.array([0.1, 0.2, 0.9, 0.2, 0.0, 0.3]), history=np.array([0]))
    settings = PipelineSettings(budgets={"cf": 2, "popular": 1}, mmr_lambda=1.0)
    assert len(_run(request, settings, 3)) == 3  # within the budgets: no widening
    picks = _run(request, settings, 50)
    assert sorted(p.row for p in picks) == [1, 2, 3, 4, 5]  # all but the person's own item
    blocked = _run(request, settings, 50, blocked=np.array([3]))
    assert sorted(p.row for p in blocked) == [1, 2, 4, 5]


def test_settings_refuse_unknown_generators_and_bad_rates() -> None:
    with pytest.raises(ValueError, match="unknown candidate generators"):
        PipelineSettings(budgets={"nope": 1})
    with pytest.raises(ValueError):
        PipelineSettings(explore=1.5)


# -- through the Device an app embeds --------------------------------------------------------


def test_device_recommend_runs_the_pipeline_with_the_apps_rules(tmp_path) -> None:
    from stamen.client import Device
    from stamen.models.bundle import ReleaseBundle
    from stamen.privacy import generate_key, generate_signing_key, seal_signed

    rng = np.random.default_rng(0)
    n = 40
    genres = [("Sci-Fi",) if i % 2 else ("Drama",) for i in range(n)]
    catalog = ReleaseCatalog.build(
        [f"m{i}" for i in range(n)],
        titles=[f"Movie {i}" for i in range(n)],
        genres=genres,
        first_seen=np.full(n, 1_000_000),
        regions=[("US",) if i < 5 else () for i in range(n)],
    )
    bundle = ReleaseBundle(
        release=1,
        model="mf",
        settings={"loss": "ials", "dim": 4},
        arrays={
            "items.weight": rng.normal(0, 0.3, (n, 4)).astype(np.float32),
            "items.bias": rng.normal(0, 0.1, n).astype(np.float32),
        },
        catalog=catalog,
        popularity=rng.random(n).astype(np.float32),
        trending=np.arange(n, dtype=np.float32),
    )
    private, public = generate_signing_key()
    settings = PipelineSettings(genre_cap=3)
    with Device.open(
        tmp_path / "d", key=generate_key(), release_key=public, pipeline=settings, seed=0
    ) as device:
        device.apply_release(seal_signed(bundle.encode(), private_key=private))
        for i in (1, 3, 5):
            device.record(f"m{i}", "play")
        recs = device.recommend(6, context={"region": "DE"}, exclude=["m39", "m37"])
        items = [r.item for r in recs]
        assert len(items) == 6 and len(set(items)) == 6
        assert not {"m1", "m3", "m5", "m39", "m37"} & set(items)  # consumed and blocked
        assert not {f"m{i}" for i in range(5)} & set(items)  # US only
        rows = bundle.catalog.index_of(items)
        assert max(sum(g in genres[r] for r in rows) for g in ("Sci-Fi", "Drama")) <= 3
        assert all(r.reason and r.source in GENERATORS and r.propensity == 1.0 for r in recs)
        assert all(r.scores for r in recs)
        assert "trending" in {s for r in recs for s in r.scores}  # the release's counts used


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.sampled_from(["Drama", "Comedy", "Action", "Sci-Fi", "Noir"]), max_size=4),
        min_size=1,
        max_size=40,
    )
)
def test_genre_groups_are_np_uniques_groups(genre_lists: list[list[str]]) -> None:
    """Items group by their set of genres, numbered as ``np.unique(axis=0)`` numbers the
    sorted padded rows (the slow way it was once done), members ascending within a group."""
    ids = [str(i) for i in range(len(genre_lists))]
    catalog = ReleaseCatalog.build(ids, titles=ids, genres=[tuple(g) for g in genre_lists])
    group_of, indptr, members = catalog.genre_groups
    meta = {"genre_names": catalog.genre_names}
    carried = ReleaseCatalog.from_tensors(catalog.to_tensors(), meta).genre_groups
    assert [a.tolist() for a in carried] == [group_of.tolist(), indptr.tolist(), members.tolist()]
    counts = np.diff(catalog.genre_indptr)
    width = int(counts.max(initial=0))
    padded = np.full((len(ids), width), np.iinfo(np.int64).max, np.int64)
    padded[np.arange(width) < counts[:, None]] = catalog.genre_index
    _, expected = np.unique(np.sort(padded, axis=1), axis=0, return_inverse=True)
    assert group_of.tolist() == expected.reshape(-1).tolist()
    for g in range(len(indptr) - 1):
        rows = members[indptr[g] : indptr[g + 1]]
        assert rows.tolist() == sorted(rows.tolist()) and set(group_of[rows]) == {g}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.sampled_from([0.0, 1.0, 2.0, 2.5, 3.0, float("nan"), float("inf"), -float("inf")]),
        min_size=1,
        max_size=3000,
    ),
    st.lists(st.tuples(st.integers(0, 1500), st.lists(st.integers(0, 2999), max_size=40))),
)
def test_a_static_list_is_what_sorting_every_row_gives(values, requests) -> None:
    """The head sorted once and lengthened on demand gives, request after request, the
    rows a full sort gives (best first, ties by row, non-finite never): scores with many
    ties, as trending counts have."""
    scores = np.array(values)
    ids = [str(i) for i in range(len(scores))]
    index = ReleaseIndex(ReleaseCatalog.build(ids, titles=ids), scores, None)
    finite = np.flatnonzero(np.isfinite(scores))
    everything = finite[np.lexsort((finite, -scores[finite]))]
    for budget, excluded in requests:
        gone = np.array(excluded, np.int64)
        rows, got = index.static_top("popular", budget, gone)
        expected = everything[~np.isin(everything, gone)][:budget]
        assert rows.tolist() == expected.tolist()
        assert got.tolist() == scores[expected].tolist()


def test_warming_sorts_every_static_list_and_changes_no_answer() -> None:
    rng = np.random.default_rng(5)
    n = 3000
    ids = [str(i) for i in range(n)]
    catalog = ReleaseCatalog.build(ids, titles=ids, first_seen=rng.integers(-1, 1_700_000_000, n))
    popularity, trending = rng.random(n), rng.poisson(1.0, n).astype(np.float64)
    warm, cold = (ReleaseIndex(catalog, popularity, trending) for _ in range(2))
    warm.warm()
    assert set(warm._sorted) == {"fresh", "trending", "popular"} and not cold._sorted
    gone = rng.choice(n, 30, replace=False)
    for name in ("fresh", "trending", "popular"):
        for budget in (5, 100, 2000):
            a, b = warm.static_top(name, budget, gone), cold.static_top(name, budget, gone)
            assert a[0].tolist() == b[0].tolist() and a[1].tolist() == b[1].tolist()
    without = ReleaseIndex(catalog, popularity, None)
    without.warm()  # a release without trending counts has no trending list
    assert set(without._sorted) == {"fresh", "popular"}
