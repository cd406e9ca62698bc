"""The leave-one-out split: order by time, seeded tie-breaking, negatives."""

from __future__ import annotations

import numpy as np
import pytest

from stamen.models import DataError, Interactions
from stamen.models.two_tower.context import UNKNOWN_CONTEXT, timestamp_contexts
from stamen.simulation.protocol.split import leave_one_out


def _table(users, items, times, n_items=None):
    item_ids = np.arange(n_items) if n_items else None
    return Interactions.from_raw(
        np.array(users),
        np.array(items),
        np.ones(len(users)),
        None if times is None else np.array(times),
        item_ids=item_ids,
    )


def test_latest_is_test_and_previous_is_validation() -> None:
    data = _table(
        [0, 0, 0, 0, 1, 1, 1], [5, 3, 9, 1, 2, 4, 6], [10, 40, 20, 30, 3, 1, 2], n_items=120
    )
    split = leave_one_out(data, seed=0)
    assert split.test.tolist() == [3, 2]
    assert split.valid.tolist() == [1, 6]
    assert sorted(split.train.row(0).tolist()) == [5, 9]
    assert split.train.row(1).tolist() == [4]


def test_every_event_keeps_its_context_and_held_out_events_theirs() -> None:
    hour = 3600
    times = [10 * hour, 40 * hour, 20 * hour, 30 * hour, 3 * hour, hour, 2 * hour, 5, 6]
    data = _table([0, 0, 0, 0, 1, 1, 1, 2, 2], [5, 3, 9, 1, 2, 4, 6, 7, 8], times, n_items=120)
    split = leave_one_out(data, seed=0)
    context = dict(
        zip(
            zip([0, 0, 0, 0, 1, 1, 1, 2, 2], [5, 3, 9, 1, 2, 4, 6, 7, 8], strict=True),
            timestamp_contexts(np.array(times)).tolist(),
            strict=True,
        )
    )
    users, items = split.train.pairs()
    assert split.train.contexts.tolist() == [
        context[(u, i)] for u, i in zip(users.tolist(), items.tolist(), strict=True)
    ]
    assert split.test_context[:2].tolist() == [context[(0, 3)], context[(1, 2)]]
    assert split.valid_context[:2].tolist() == [context[(0, 1)], context[(1, 6)]]
    assert split.test_context[2].tolist() == list(UNKNOWN_CONTEXT)  # not evaluated
    chosen = split.select(np.array([1]))
    assert chosen.train.contexts.tolist() == [context[(1, 4)]]
    assert chosen.test_context.tolist() == [context[(1, 2)]]
    untimed = _table([0, 0, 0], [1, 2, 3], None, n_items=120)
    assert leave_one_out(untimed, seed=0).train.contexts is None


def test_users_with_fewer_than_three_items_train_only() -> None:
    data = _table([0, 0, 1, 1, 1], [1, 2, 3, 4, 5], [1, 2, 1, 2, 3], n_items=120)
    split = leave_one_out(data, seed=0)
    assert split.test[0] == -1 and split.valid[0] == -1
    assert sorted(split.train.row(0).tolist()) == [1, 2]
    assert (split.negatives[0] == -1).all()
    assert split.stats()["train_only_users"] == 1


def test_ties_are_broken_by_seeded_shuffle_not_item_id() -> None:
    # one user, 30 interactions all in the same second
    data = _table([0] * 30, list(range(30)), [100] * 30, n_items=200)
    tests = {int(leave_one_out(data, seed=s).test[0]) for s in range(20)}
    assert len(tests) > 5  # not always the highest (or lowest) item id
    assert leave_one_out(data, seed=3).test[0] == leave_one_out(data, seed=3).test[0]


def test_negatives_are_fixed_by_seed_and_disjoint_from_all_user_items() -> None:
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(50), 20)
    items = np.concatenate([rng.choice(300, 20, replace=False) for _ in range(50)])
    data = _table(users, items, rng.integers(0, 1000, len(users)), n_items=300)
    a, b = leave_one_out(data, seed=7), leave_one_out(data, seed=7)
    assert np.array_equal(a.negatives, b.negatives)
    assert not np.array_equal(a.negatives, leave_one_out(data, seed=8).negatives)
    for u in range(50):
        own = set(items[users == u].tolist())
        neg = a.negatives[u]
        assert len(set(neg.tolist())) == 99
        assert not own & set(neg.tolist())


def test_too_small_catalogue_for_negatives_is_an_error() -> None:
    data = _table([0, 0, 0], [0, 1, 2], [1, 2, 3], n_items=50)
    with pytest.raises(DataError) as raised:
        leave_one_out(data, seed=0)
    # the person as the file names them, what is short, and the size that would do
    assert str(raised.value).startswith(
        f"user {data.user_ids[0]!r} has 47 items they have not interacted with, and the "
        "sampled protocol draws 99 of them (1 users are short): the catalogue needs at "
        "least 102 items"
    )


def test_random_holdout_without_timestamps() -> None:
    data = _table([0] * 10, list(range(10)), None, n_items=200)
    held = {int(leave_one_out(data, seed=s).test[0]) for s in range(15)}
    assert len(held) > 3


def test_select_keeps_each_chosen_users_rows() -> None:
    interactions = Interactions.from_raw(
        np.repeat(np.arange(4), 4),
        np.tile(np.arange(4), 4) + np.repeat(np.arange(4), 4),
        np.ones(16),
        np.tile(np.arange(4), 4),
        item_ids=np.arange(7),
    )
    split = leave_one_out(interactions, seed=0, n_negatives=2)
    sub = split.select(np.array([2, 0]))
    assert sub.n_users == 2 and sub.n_items == split.n_items
    assert sub.train.row(0).tolist() == split.train.row(2).tolist()
    assert [sub.valid[1], sub.test[1]] == [split.valid[0], split.test[0]]
    assert sub.negatives[0].tolist() == split.negatives[2].tolist()


def test_random_holdout_ignores_the_times_it_is_given() -> None:
    times = list(range(10))  # item 9 is always the latest
    data = _table([0] * 10, list(range(10)), times, n_items=200)
    assert {int(leave_one_out(data, seed=s).test[0]) for s in range(5)} == {9}
    held = {int(leave_one_out(data, seed=s, holdout="random").test[0]) for s in range(15)}
    assert len(held) > 3
    with pytest.raises(ValueError, match="holdout must be"):
        leave_one_out(data, seed=0, holdout="ratio")  # type: ignore[arg-type]


def test_the_number_of_negatives_is_the_runs() -> None:
    data = _table([0] * 10, list(range(10)), list(range(10)), n_items=200)
    assert leave_one_out(data, seed=0, n_negatives=7).negatives.shape == (1, 7)
