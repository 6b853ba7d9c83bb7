"""Circuit breaker state machine, on a fake clock."""

from __future__ import annotations

from detect_proxy.breaker import CircuitBreaker, State


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_threshold_and_fails_fast():
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, open_s=2.0, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.failure()
    assert breaker.state == State.CLOSED
    breaker.success()  # a success resets the count
    for _ in range(3):
        assert breaker.allow()
        breaker.failure()
    assert breaker.state == State.OPEN
    assert not breaker.allow()
    assert breaker.retry_in() == 2.0


def test_half_open_probe_closes_or_reopens():
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, open_s=1.0, half_open_probes=1, clock=clock)
    breaker.allow()
    breaker.failure()
    clock.now += 1.0
    assert breaker.allow()            # the probe
    assert breaker.state == State.HALF_OPEN
    assert not breaker.allow()        # only one probe at a time
    breaker.failure()
    assert breaker.state == State.OPEN and not breaker.allow()
    clock.now += 1.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state == State.CLOSED and breaker.allow()
    assert breaker.transitions == 5


def test_released_probe_frees_the_slot():
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, open_s=1.0, clock=clock)
    breaker.allow()
    breaker.failure()
    clock.now += 1.0
    assert breaker.allow()
    breaker.release()
    assert breaker.allow()
