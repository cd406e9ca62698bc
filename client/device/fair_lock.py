"""The device's lock: reentrant, and granted in the order threads asked for it.

``threading.RLock`` is not fair: a thread that releases it and asks again at once (a UI
thread calling ``recommend`` back to back) usually takes it again before a thread that
has been waiting, so ``apply_release`` could wait seconds for the moment it swaps the new
release in (``benchmarks/device_concurrency.py``). :class:`FairLock` hands the lock to the
longest waiter when its holder lets go, so a waiting thread gets it after at most the
calls already queued ahead of it.
"""

from __future__ import annotations

import threading
from collections import deque
from types import TracebackType

__all__ = ["FairLock"]

#: The owner while the lock passes from its holder to the next waiter.
_HANDED_OVER = -1


class FairLock:
    """A reentrant lock granted first come, first served (module docstring); used as
    ``with lock:``, or through blocking :meth:`acquire` and :meth:`release`."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._owner: int | None = None
        self._depth = 0
        self._waiting: deque[threading.Lock] = deque()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock, waiting for the threads that asked before (or for nobody,
        where this thread holds it already). Only blocking takes without a timeout are
        supported."""
        if not blocking or timeout != -1:
            raise ValueError("FairLock takes only blocking acquires without a timeout")
        me = threading.get_ident()
        with self._guard:
            if self._owner == me:
                self._depth += 1
                return True
            if self._owner is None and not self._waiting:
                self._owner, self._depth = me, 1
                return True
            turn = threading.Lock()
            turn.acquire()
            self._waiting.append(turn)
        turn.acquire()  # released by the holder that hands the lock to this thread
        with self._guard:
            self._owner, self._depth = me, 1
        return True

    def release(self) -> None:
        """Let go once; the outermost release hands the lock to the longest waiter."""
        with self._guard:
            if self._owner != threading.get_ident():
                raise RuntimeError("cannot release a lock this thread does not hold")
            self._depth -= 1
            if self._depth:
                return
            if self._waiting:
                self._owner = _HANDED_OVER  # nobody may take it on the way
                self._waiting.popleft().release()
            else:
                self._owner = None

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.release()
