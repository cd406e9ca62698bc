"""A Grid that notices replies promptly.

Flower's deployment Grid (``flwr.superlink.grid.http_grid``) pulls a stage's replies from
the SuperLink, then sleeps 3 s before pulling again, so every stage of a round costs at
least 3 s however fast the devices answer: a SecAgg+ round has four stages. ``PromptGrid``
wraps the run's Grid and pulls with a short backoff instead (50 ms, growing to 0.5 s), with
the same timeout semantics; everything else is the wrapped Grid's.

Flower 1.42's default fit and evaluate workflows (a plain round's stages) call
``send_and_receive`` with no timeout, so a reply that never comes keeps the round waiting
until the message's time to live (12 hours) runs out. A device that is alive but whose
reply was lost (its SuperNode dropped it after the SuperLink answered a Fleet request with an
error; docs/operator.md) is such a reply. ``PromptGrid(grid, timeout=…)`` gives those stages
a timeout: a caller that passes none waits at most that long, and the round goes on with the
replies that came (the strategy records the rest as dropouts).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo  # Grid.get_nodes' type
from flwr.server import Grid
from flwr.supercore.run import Run

__all__ = ["PromptGrid"]


class PromptGrid(Grid):
    """``grid`` with ``send_and_receive`` polling every ``first_s`` growing to ``most_s``;
    a caller that gives no timeout waits at most ``timeout`` seconds (``None``: no limit)."""

    def __init__(
        self,
        grid: Grid,
        *,
        first_s: float = 0.05,
        most_s: float = 0.5,
        timeout: float | None = None,
    ) -> None:
        if not 0 < first_s <= most_s:
            raise ValueError(f"need 0 < first_s <= most_s (got {first_s}, {most_s})")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be positive or None (got {timeout})")
        self._grid, self._first_s, self._most_s = grid, first_s, most_s
        self._timeout = timeout

    def set_run(self, run: Run) -> None:  # noqa: D102
        self._grid.set_run(run)

    @property
    def run(self) -> Run:  # noqa: D102
        return self._grid.run

    def create_message(  # noqa: D102
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return self._grid.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:  # noqa: D102
        return self._grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        return self._grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push ``messages``, then pull their replies until all arrived or ``timeout``
        seconds passed (``None``: the grid's own timeout, if any); the replies that arrived."""
        if timeout is None:
            timeout = self._timeout
        waiting = set(self._grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        pause = self._first_s
        while waiting:
            arrived = list(self._grid.pull_messages(waiting))
            replies.extend(arrived)
            waiting.difference_update(m.metadata.reply_to_message_id for m in arrived)
            if not waiting:
                break
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            time.sleep(pause if left is None else min(pause, left))
            pause = min(pause * 1.5, self._most_s)
        return replies
