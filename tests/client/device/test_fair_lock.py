"""The device's lock is reentrant and first come, first served, so a thread calling the
device back to back cannot starve another (an ``apply_release`` waiting to swap)."""

from __future__ import annotations

import threading
import time

import pytest

from stamen.client.device.fair_lock import FairLock

WAIT = 60  # seconds: a bound on what must happen, never reached when it does


def test_reentrant_and_released_only_by_its_holder() -> None:
    lock = FairLock()
    with lock, lock:  # the holder takes it again without waiting
        other = threading.Thread(target=lambda: pytest.raises(RuntimeError, lock.release))
        other.start()
        other.join(WAIT)
    with pytest.raises(RuntimeError, match="does not hold"):
        lock.release()
    with pytest.raises(ValueError, match="only blocking"):
        lock.acquire(timeout=1.0)


def test_waiters_are_served_in_the_order_they_asked() -> None:
    lock, order = FairLock(), []
    lock.acquire()
    threads = []
    for name in "abcd":
        asked = threading.Event()

        def take(name: str = name, asked: threading.Event = asked) -> None:
            asked.set()
            with lock:
                order.append(name)

        thread = threading.Thread(target=take, daemon=True)
        thread.start()
        assert asked.wait(WAIT)
        # wait until it queued (its turn is in the queue) before the next one asks
        deadline = time.monotonic() + WAIT
        while len(lock._waiting) < len(threads) + 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        threads.append(thread)
    lock.release()
    for thread in threads:
        thread.join(WAIT)
    assert order == list("abcd")


def test_a_thread_taking_the_lock_back_to_back_cannot_starve_a_waiter() -> None:
    lock, stop, turns = FairLock(), threading.Event(), [0]

    def greedy() -> None:  # a UI thread calling the device in a tight loop
        while not stop.is_set():
            with lock:
                turns[0] += 1
                stop.wait(0.0005)  # work that lets go of the GIL, as numpy's does

    loop = threading.Thread(target=greedy, daemon=True)
    loop.start()
    try:
        deadline = time.monotonic() + WAIT
        while turns[0] < 100 and time.monotonic() < deadline:  # the loop is running
            time.sleep(0.001)
        for _ in range(20):
            asked_at = turns[0]
            with lock:
                # the loop's hold in progress when this thread asked ends, and the loop's
                # next take queues behind this one: at most one more turn
                assert turns[0] - asked_at <= 1
    finally:
        stop.set()
        loop.join(WAIT)
    assert not loop.is_alive()
