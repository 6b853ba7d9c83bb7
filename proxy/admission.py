"""Admission: serve at the backend's capacity, queue what can finish in time, refuse the rest
at once.

At most ``limit`` calls per proxy are upstream at a time; more would only wait in Triton's
queue, out of sight. A call that finds every slot taken waits its turn in a FIFO queue if
the wait it faces fits both its own deadline and ``max_wait_s``; otherwise it is refused
immediately with RESOURCE_EXHAUSTED, before any work is spent on it. (Its turn and its own
upstream time must fit in half of what is left of its deadline.) The wait is estimated
from what the backend delivers: the rate at which calls completed while others were waiting
(the backend's throughput at capacity), or, before that is known, ``limit`` over the mean
upstream latency (Little's law). Calls that left early (their caller gave up) free their
slot but count for neither: the backend may still be working on them.

The queue is bounded in time, not only in length, so when a burst ends the proxy is back to
normal latency within ``max_wait_s``; and a call refused here was never started, so nothing
retries work in progress.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable

# Weight of the newest sample in the moving averages of latency and of the interval between
# calls completed under a queue.
SMOOTHING = 0.2
# Throughput measured under a queue counts for this long after the queue last held a call.
SATURATED_MEMORY_S = 5.0
# A queued call must be expected to finish within this share of what is left of its
# deadline: estimates drift with load, and a call that misses its deadline after its turn
# came has cost the backend work that nobody receives.
DEADLINE_SHARE = 0.5


class AtCapacity(Exception):
    """Refused before it started: the expected wait exceeds what the call can afford."""

    def __init__(self, expected_wait_s: float, affordable_s: float) -> None:
        super().__init__(f"expected wait {expected_wait_s:.2f}s > {affordable_s:.2f}s")
        self.expected_wait_s = expected_wait_s
        self.affordable_s = affordable_s


class Admission:
    def __init__(self, limit: int, max_wait_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._active = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._latency_s = 0.0  # moving average of the time a call holds a slot
        self._interval_s = 0.0  # moving average of the time between completions under a queue
        self._last_completion = 0.0
        self._saturated_at = float("-inf")

    @property
    def active(self) -> int:
        return self._active

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def throughput(self) -> float:
        """Calls per second the backend completes for this proxy at capacity (0: unknown)."""
        if self._measured():
            return 1.0 / self._interval_s
        return self.limit / self._latency_s if self._latency_s > 0 else 0.0

    def expected_wait(self, ahead: int) -> float:
        rate = self.throughput()
        return (ahead + 1) / rate if rate > 0 else 0.0

    def _measured(self) -> bool:
        return self._interval_s > 0 and self._clock() - self._saturated_at < SATURATED_MEMORY_S

    @contextlib.asynccontextmanager
    async def slot(self, remaining_s: float) -> AsyncIterator[float]:
        """Hold an upstream slot for the block; yields the seconds spent queueing."""
        queued_for = 0.0
        if self._active < self.limit and not self._waiters:
            self._active += 1
        else:
            wait = self.expected_wait(len(self._waiters))
            affordable = min(self.max_wait_s, DEADLINE_SHARE * remaining_s - self._latency_s)
            if wait > affordable:
                raise AtCapacity(wait, max(affordable, 0.0))
            queued_for = await self._queue()
        start = self._clock()
        completed = False
        try:
            yield queued_for
            completed = True
        except asyncio.CancelledError:
            raise
        except Exception:
            completed = True  # an answer, if not a happy one: the backend did the work
            raise
        finally:
            self._release(self._clock() - start if completed else None)

    async def _queue(self) -> float:
        start = self._clock()
        self._saturated_at = start
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # the slot is handed over by _release, already counted as active
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(None)  # handed a slot as the caller left: pass it on
            else:
                with contextlib.suppress(ValueError):  # _release may have dropped it already
                    self._waiters.remove(waiter)
            raise
        return self._clock() - start

    def _release(self, held_s: float | None) -> None:
        """Free a slot; ``held_s`` is None when the call did not complete."""
        now = self._clock()
        if held_s is not None:
            self._latency_s = _smooth(self._latency_s, held_s)
            if self._waiters:  # at capacity: completions pace the queue
                if self._last_completion:
                    self._interval_s = _smooth(self._interval_s, now - self._last_completion)
                self._last_completion = now
        while self._waiters:
            waiter = self._waiters.popleft()
            if waiter.done():  # cancelled while queued
                continue
            self._saturated_at = now
            waiter.set_result(None)  # the slot passes on: active stays the same
            return
        self._last_completion = 0.0
        self._active -= 1


def _smooth(average: float, sample: float) -> float:
    return sample if average == 0 else (1 - SMOOTHING) * average + SMOOTHING * sample
