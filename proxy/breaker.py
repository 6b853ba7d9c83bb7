"""A circuit breaker in front of the upstream: stop sending to a Triton that keeps failing.

closed: calls flow; ``failure_threshold`` consecutive upstream failures (the kind that say
the server is unwell: UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL) open it.
open: calls fail at once with UNAVAILABLE for ``open_s``, so callers are not held waiting
on a dead backend and the backend is not hammered while it recovers.
half-open: up to ``half_open_probes`` calls go through; a success closes the breaker, a
failure opens it again.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class State(enum.IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    def __init__(self, failure_threshold: int, open_s: float, half_open_probes: int = 1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failure_threshold = failure_threshold
        self.open_s = open_s
        self.half_open_probes = half_open_probes
        self._clock = clock
        self.state = State.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probes = 0
        self.transitions = 0

    def _move(self, state: State, why: str) -> None:
        if state != self.state:
            log.log(logging.WARNING if state == State.OPEN else logging.INFO,
                    "circuit breaker %s -> %s: %s", self.state.name, state.name, why)
            self.state = state
            self.transitions += 1

    def retry_in(self) -> float:
        return max(0.0, self._opened_at + self.open_s - self._clock())

    def allow(self) -> bool:
        """Whether a call may go upstream now; reserves a probe slot when half-open."""
        if self.state == State.OPEN:
            if self.retry_in() > 0:
                return False
            self._move(State.HALF_OPEN, f"{self.open_s:g}s passed; probing")
            self._probes = 0
        if self.state == State.HALF_OPEN:
            if self._probes >= self.half_open_probes:
                return False
            self._probes += 1
        return True

    def success(self) -> None:
        self._failures = 0
        if self.state != State.CLOSED:
            self._move(State.CLOSED, "a call succeeded")

    def failure(self) -> None:
        self._failures += 1
        if self.state == State.HALF_OPEN or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
            self._move(State.OPEN, f"{self._failures} consecutive upstream failure(s)")

    def release(self) -> None:
        """A call that neither proved nor disproved upstream health (e.g. bad input)."""
        if self.state == State.HALF_OPEN and self._probes > 0:
            self._probes -= 1
