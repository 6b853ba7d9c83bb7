"""Admission: serve at the backend's capacity, queue what can finish in time, refuse the rest
at once.

At most ``limit`` calls per proxy are upstream at a time; more would only wait in Triton's
queue, out of sight. A call that finds every slot taken waits its turn in a FIFO queue if
the wait it faces fits both its own deadline and ``max_wait_s``; otherwise it is refused
immediately with RESOURCE_EXHAUSTED, before any work is spent on it. (Its turn and its own
upstream time must fit in half of what is left of its deadline.)

The wait is estimated from what the backend delivers. While calls queue, every slot is busy,
so by Little's law the backend completes ``limit / latency`` of this proxy's calls a second,
latency being the moving average of the time a call holds its slot. That average is steady
where counting completions is not: a batching backend completes calls in bursts. Calls that
left early (their caller gave up) free their slot but are not counted: the backend may
still be working on them, and their short holds would make the backend look faster.

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

# Weight of the newest sample in the moving average of latency.
SMOOTHING = 0.2
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
        self._latency_s = 0.0  # moving average of the time a completed call held its slot

    @property
    def active(self) -> int:
        return self._active

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def throughput(self) -> float:
        """Calls per second the backend completes for this proxy at capacity (0: unknown)."""
        return self.limit / self._latency_s if self._latency_s > 0 else 0.0

    def expected_wait(self, ahead: int) -> float:
        rate = self.throughput()
        return (ahead + 1) / rate if rate > 0 else 0.0

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
        if held_s is not None:
            self._latency_s = _smooth(self._latency_s, held_s)
        while self._waiters:
            waiter = self._waiters.popleft()
            if waiter.done():  # cancelled while queued
                continue
            waiter.set_result(None)  # the slot passes on: active stays the same
            return
        self._active -= 1


def _smooth(average: float, sample: float) -> float:
    return sample if average == 0 else (1 - SMOOTHING) * average + SMOOTHING * sample
