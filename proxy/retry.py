"""Retries of upstream calls: only where safe, with jittered backoff, within a budget.

Safe means the call never got an answer: gRPC's UNAVAILABLE (connection refused or reset,
no healthy upstream). Calls the server answered (INVALID_ARGUMENT, NOT_FOUND,
RESOURCE_EXHAUSTED, ...) are never retried. The budget lets retries add at most a fraction
of the recent call rate, so a failing backend sees a bounded multiple of its normal load,
never a retry storm.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable


class RetryBudget:
    """Token bucket: every call deposits ``ratio`` tokens, every retry spends one; a floor
    of ``min_per_s`` tokens a second keeps low-traffic services retryable."""

    def __init__(self, ratio: float = 0.2, min_per_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.capacity = max(10.0, min_per_s * 10)
        self._tokens = self.capacity
        self._clock = clock
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.min_per_s)
        self._last = now

    def record_call(self) -> None:
        self._refill()
        self._tokens = min(self.capacity, self._tokens + self.ratio)

    def try_spend(self) -> bool:
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def backoff_s(attempt: int, base_s: float, max_s: float) -> float:
    """Full jitter: uniform in [0, min(max, base * 2^attempt)], spreading retries apart."""
    return random.uniform(0.0, min(max_s, base_s * (2 ** attempt)))
