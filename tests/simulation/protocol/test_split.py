"""The split: leave-one-out and the ratio split, order by time, seeded tie-breaking,
negatives."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from stamen.models import ConfigError, DataError, Interactions
from stamen.models.two_tower.context import UNKNOWN_CONTEXT, timestamp_contexts
from stamen.simulation.cli.commands import app
from stamen.simulation.config import load_config
from stamen.simulation.protocol.split import leave_one_out, ratio_split


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
    assert split.test.tolist() == [[3], [2]]
    assert split.valid.tolist() == [[1], [6]]
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
    assert split.test[0, 0] == -1 and split.valid[0, 0] == -1
    assert sorted(split.train.row(0).tolist()) == [1, 2]
    assert (split.negatives[0] == -1).all()
    assert split.stats()["train_only_users"] == 1


def test_ties_are_broken_by_seeded_shuffle_not_item_id() -> None:
    # one user, 30 interactions all in the same second
    data = _table([0] * 30, list(range(30)), [100] * 30, n_items=200)
    tests = {int(leave_one_out(data, seed=s).test[0, 0]) for s in range(20)}
    assert len(tests) > 5  # not always the highest (or lowest) item id
    assert leave_one_out(data, seed=3).test[0, 0] == leave_one_out(data, seed=3).test[0, 0]


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
    held = {int(leave_one_out(data, seed=s).test[0, 0]) for s in range(15)}
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
    assert [sub.valid[1].tolist(), sub.test[1].tolist()] == [
        split.valid[0].tolist(),
        split.test[0].tolist(),
    ]
    assert sub.negatives[0].tolist() == split.negatives[2].tolist()


def test_random_holdout_ignores_the_times_it_is_given() -> None:
    times = list(range(10))  # item 9 is always the latest
    data = _table([0] * 10, list(range(10)), times, n_items=200)
    assert {int(leave_one_out(data, seed=s).test[0, 0]) for s in range(5)} == {9}
    held = {int(leave_one_out(data, seed=s, holdout="random").test[0, 0]) for s in range(15)}
    assert len(held) > 3
    with pytest.raises(ValueError, match="holdout must be"):
        leave_one_out(data, seed=0, holdout="ratio")  # type: ignore[arg-type]


def test_the_number_of_negatives_is_the_runs() -> None:
    data = _table([0] * 10, list(range(10)), list(range(10)), n_items=200)
    assert leave_one_out(data, seed=0, n_negatives=7).negatives.shape == (1, 7)


def test_the_ratio_split_holds_out_the_latest_share_of_each_user() -> None:
    # user 0: 10 items, latest last; user 1: 4 items; user 2: 2 items (train only);
    # user 3: 7 items
    users = [0] * 10 + [1] * 4 + [2] * 2 + [3] * 7
    items = list(range(10)) + [20, 21, 22, 23] + [30, 31] + [40, 41, 42, 43, 44, 45, 46]
    times = list(range(10)) + [4, 3, 2, 1] + [1, 2] + list(range(7))
    data = _table(users, items, times, n_items=150)
    split = ratio_split(data, test_ratio=0.2, seed=0)
    # ceil(0.2 n): 2 of 10, 1 of 4, 2 of 7; each row padded to the widest
    assert split.test.tolist() == [[8, 9], [20, -1], [-1, -1], [45, 46]]
    assert split.valid.tolist() == [[6, 7], [21, -1], [-1, -1], [43, 44]]
    assert sorted(split.train.row(0).tolist()) == list(range(6))
    assert sorted(split.train.row(1).tolist()) == [22, 23]
    assert sorted(split.train.row(2).tolist()) == [30, 31]
    assert split.evaluated.tolist() == [0, 1, 3]
    assert split.stats()["evaluated_users"] == 3 and split.stats()["train_only_users"] == 1
    # 0.4: 4 of 10; ceil(1.6) = 2 of 4 exceeds (4 - 1) // 2 = 1; ceil(2.8) = 3 of 7 just fits
    wide = ratio_split(data, test_ratio=0.4, seed=0)
    assert wide.test.tolist() == [[6, 7, 8, 9], [20, -1, -1, -1], [-1] * 4, [44, 45, 46, -1]]
    assert wide.valid.tolist() == [[2, 3, 4, 5], [21, -1, -1, -1], [-1] * 4, [41, 42, 43, -1]]
    assert wide.train.row(3).tolist() == [40]
    # the validation items are excluded after the training items, in their order
    assert wide.seen(include_valid=True).row(0).tolist()[-4:] == [2, 3, 4, 5]


def test_the_ratio_is_applied_to_the_decimal_as_written() -> None:
    data = _table([0] * 30, list(range(30)), list(range(30)), n_items=200)
    # 0.1 * 30 is 3.0000000000000004 in floating point: 3 items, not 4
    assert ratio_split(data, test_ratio=0.1, seed=0).test.tolist() == [[27, 28, 29]]


def test_the_ratio_split_breaks_ties_by_seeded_shuffle() -> None:
    # items 0 and 1 come first; items 2-5 share the last second: n = 6, ceil(1.2) = 2
    data = _table([0] * 6, list(range(6)), [1, 2, 3, 3, 3, 3], n_items=200)
    splits = [ratio_split(data, test_ratio=0.2, seed=s) for s in range(20)]
    assert all(sorted(s.train.row(0).tolist()) == [0, 1] for s in splits)
    assert all(sorted([*s.valid[0], *s.test[0]]) == [2, 3, 4, 5] for s in splits)
    assert len({tuple(s.test[0]) for s in splits}) > 3  # not by item id
    again = ratio_split(data, test_ratio=0.2, seed=3)
    assert again.test.tolist() == splits[3].test.tolist()


def test_a_random_order_ratio_split_holds_out_random_items() -> None:
    data = _table([0] * 10, list(range(10)), list(range(10)), n_items=200)
    held = [ratio_split(data, test_ratio=0.2, seed=s, holdout="random") for s in range(15)]
    assert len({tuple(sorted(s.test[0])) for s in held}) > 3
    for s in held:
        parts = [*s.train.row(0).tolist(), *s.valid[0].tolist(), *s.test[0].tolist()]
        assert sorted(parts) == list(range(10)) and len(s.test[0]) == len(s.valid[0]) == 2
    untimed = _table([0] * 10, list(range(10)), None, n_items=200)
    assert ratio_split(untimed, test_ratio=0.2, seed=4).test.tolist() == held[4].test.tolist()


def test_the_ratio_split_context_is_each_stages_first_event() -> None:
    hour = 3600
    times = [hour * t for t in (1, 2, 3, 4, 5, 6, 7)]
    data = _table([0] * 7, list(range(7)), times, n_items=200)
    split = ratio_split(data, test_ratio=0.3, seed=0)  # ceil(2.1) = 3 of 7, capped at 3
    contexts = timestamp_contexts(np.array(times)).tolist()
    assert split.test.tolist() == [[4, 5, 6]] and split.valid.tolist() == [[1, 2, 3]]
    assert split.test_context.tolist() == [contexts[4]]
    assert split.valid_context.tolist() == [contexts[1]]


def test_a_ratio_that_holds_out_one_item_each_is_leave_one_out() -> None:
    rng = np.random.default_rng(1)
    users = np.repeat(np.arange(40), rng.integers(1, 12, 40))
    items = np.concatenate([rng.choice(300, (users == u).sum(), replace=False) for u in range(40)])
    data = _table(users, items, rng.integers(0, 50, len(users)), n_items=300)
    for holdout in ("temporal", "random"):
        a = leave_one_out(data, seed=5, holdout=holdout)
        b = ratio_split(data, test_ratio=0.01, seed=5, holdout=holdout)  # ceil(0.01 n) = 1
        for name in ("valid", "test", "negatives", "valid_context", "test_context"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert np.array_equal(a.train.items, b.train.items)
        assert np.array_equal(a.train.indptr, b.train.indptr)


@pytest.mark.parametrize("ratio", [0.0, -0.1, 0.5, 1.0])
def test_a_ratio_outside_the_open_interval_is_refused(ratio: float) -> None:
    data = _table([0] * 10, list(range(10)), list(range(10)), n_items=200)
    with pytest.raises(ValueError, match=f"test_ratio must be above 0 and below 0.5, not {ratio}"):
        ratio_split(data, test_ratio=ratio, seed=0)


def test_the_run_config_chooses_the_split(tmp_path) -> None:
    data = _table([0] * 10, list(range(10)), list(range(10)), n_items=200)
    path = tmp_path / "run.toml"
    path.write_text('[protocol]\nsplit = "ratio"\ntest-ratio = 0.3\n')
    assert load_config(path).split(data).test.tolist() == [[7, 8, 9]]
    assert load_config(None).split(data).test.tolist() == [[9]]


@pytest.mark.parametrize(
    ("ratio", "message"),
    [
        ("0", "Input should be greater than 0"),
        ("-0.2", "Input should be greater than 0"),
        ("1", "Input should be less than 0.5"),
    ],
)
def test_a_bad_ratio_in_a_run_config_is_named(tmp_path, ratio: str, message: str) -> None:
    path = tmp_path / "run.toml"
    path.write_text(f'[protocol]\nsplit = "ratio"\ntest-ratio = {ratio}\n')
    with pytest.raises(ConfigError, match=f"{path}: protocol.test-ratio: {message}"):
        load_config(path)
    flags = ["simulate", "--split", "ratio", "--test-ratio", ratio, "--output", str(tmp_path)]
    result = CliRunner().invoke(app, flags)
    assert result.exit_code == 2 and f"--test-ratio: {message}" in result.output


def test_a_ratio_without_the_ratio_split_is_an_error(tmp_path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("[protocol]\ntest-ratio = 0.3\n")
    with pytest.raises(ConfigError, match="test-ratio 0.3 is given with split 'leave-one-out'"):
        load_config(path)
