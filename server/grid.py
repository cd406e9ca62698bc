"""A Grid that notices replies promptly.

Flower's deployment Grid (``flwr.superlink.grid.http_grid``) pulls a stage's replies from
the SuperLink, then sleeps 3 s before pulling again, so every stage of a round costs at
least 3 s however fast the devices answer: a SecAgg+ round has four stages. ``PromptGrid``
wraps the run's Grid and pulls with a short backoff instead (50 ms, growing to 0.5 s), with
the same timeout semantics; everything else is the wrapped Grid's.
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
    """``grid`` with ``send_and_receive`` polling every ``first_s`` growing to ``most_s``."""

    def __init__(self, grid: Grid, *, first_s: float = 0.05, most_s: float = 0.5) -> None:
        if not 0 < first_s <= most_s:
            raise ValueError(f"need 0 < first_s <= most_s (got {first_s}, {most_s})")
        self._grid, self._first_s, self._most_s = grid, first_s, most_s

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
        seconds passed (``None``: no limit); the replies that arrived."""
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
