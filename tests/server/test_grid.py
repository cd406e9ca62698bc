"""PromptGrid: all replies, found promptly, within the timeout; the rest delegated."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from stamen.server.grid import PromptGrid


class _SlowLink:
    """A Grid stand-in whose replies become pullable ``after_s`` seconds after the push;
    message ``i`` is never answered when ``i`` is in ``lost``."""

    def __init__(self, after_s: float, lost: set[int] = frozenset()) -> None:
        self.after_s, self.lost, self.pulls = after_s, lost, 0
        self.pushed_at = 0.0

    def push_messages(self, messages):
        self.pushed_at = time.monotonic()
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids):
        self.pulls += 1
        if time.monotonic() - self.pushed_at < self.after_s:
            return []
        return [
            SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i))
            for i in sorted(ids)
            if int(i[1:]) not in self.lost
        ]

    def get_node_ids(self):
        return [7, 8]


def test_every_reply_comes_back_soon_after_it_arrives() -> None:
    link = _SlowLink(after_s=0.3)
    started = time.monotonic()
    replies = PromptGrid(link).send_and_receive(["a", "b", "c"], timeout=10)  # type: ignore[arg-type]
    took = time.monotonic() - started
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"]
    # Flower's own Grid sleeps 3 s between pulls; this one at most 0.5 s
    assert 0.3 <= took < 3.0


def test_a_lost_reply_ends_the_wait_at_the_timeout_with_the_others() -> None:
    link = _SlowLink(after_s=0.0, lost={1})
    started = time.monotonic()
    replies = PromptGrid(link).send_and_receive(["a", "b"], timeout=0.6)  # type: ignore[arg-type]
    took = time.monotonic() - started
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"]
    assert 0.6 <= took < 0.6 + 1.0


def test_no_timeout_waits_until_all_replies_arrived() -> None:
    link = _SlowLink(after_s=0.2)
    replies = PromptGrid(link).send_and_receive(["a"], timeout=None)  # type: ignore[arg-type]
    assert len(replies) == 1 and link.pulls >= 2


def test_everything_else_is_the_wrapped_grid() -> None:
    assert list(PromptGrid(_SlowLink(0.0)).get_node_ids()) == [7, 8]  # type: ignore[arg-type]


def test_bad_poll_intervals_are_refused() -> None:
    with pytest.raises(ValueError, match="first_s"):
        PromptGrid(_SlowLink(0.0), first_s=1.0, most_s=0.5)  # type: ignore[arg-type]


def test_the_grid_timeout_ends_a_wait_whose_caller_gave_none() -> None:
    """Flower's plain fit and evaluate workflows give no timeout: the grid's own ends them."""
    link = _SlowLink(after_s=0.0, lost={1})
    started = time.monotonic()
    replies = PromptGrid(link, timeout=0.6).send_and_receive(["a", "b"])  # type: ignore[arg-type]
    took = time.monotonic() - started
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"]
    assert 0.6 <= took < 0.6 + 1.0


def test_a_caller_timeout_overrides_the_grid_timeout() -> None:
    link = _SlowLink(after_s=0.0, lost={0})
    started = time.monotonic()
    PromptGrid(link, timeout=30.0).send_and_receive(["a"], timeout=0.3)  # type: ignore[arg-type]
    assert time.monotonic() - started < 0.3 + 1.0


def test_a_non_positive_grid_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="timeout"):
        PromptGrid(_SlowLink(0.0), timeout=0.0)  # type: ignore[arg-type]
