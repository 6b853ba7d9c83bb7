"""The result cache: a model's full answer for an image, kept so that a repeated image costs
no backend work.

A key names everything the answer depends on: the image bytes (SHA-256), the model, the
version that would answer and an epoch (the operator's deployment epoch and a digest of the
model's configuration and the server's model versions, ``catalogue.Resolved``), so a new
version, a new config or a bumped epoch misses instead of serving an old answer. The value is
the model's whole answer, every detection, so ``min_score`` and ``max_detections`` apply
after a hit exactly as after a miss.

Two tiers: an in-process LRU bounded in bytes (``LocalTier``), then a shared tier (Redis,
``redis_tier``) across processes and pods, which fails open. Identical calls in flight are
coalesced: the first computes, the others wait for its answer. Every lookup is counted once
as hit, miss, coalesced or bypassed, so the four add up to the images looked up.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import grpc

from .errors import ProxyError
from .telemetry import Telemetry

# A leader's failure its followers share: the same image fails the same way for everyone.
# Other failures (its deadline, its cancellation, an outage) are its own; followers then
# compute for themselves.
SHARED_FAILURES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
ENTRY_OVERHEAD_BYTES = 100  # the key and bookkeeping of an entry, roughly


def cache_key(image: bytes | memoryview, model: str, version: str, epoch: str) -> str:
    return f"detect:{model}:{version}:{epoch}:{hashlib.sha256(image).hexdigest()}"


class SharedTier(Protocol):
    """A tier shared between processes. Neither method raises: a failure is a miss, or a
    store that did not happen, and is counted by the tier itself."""

    async def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def close(self) -> None: ...


class LocalTier:
    """Least recently used first out, bounded in bytes; entries expire after the TTL."""

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: str, value: bytes, ttl_s: float) -> None:
        size = len(value) + len(key) + ENTRY_OVERHEAD_BYTES
        if size > self.max_bytes:
            return
        self._drop(key)
        self._entries[key] = (self._clock() + ttl_s, value)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= len(entry[1]) + len(key) + ENTRY_OVERHEAD_BYTES


class _LeaderGone(Exception):
    """The call computing an answer ended without one that its followers can share."""


@dataclass(frozen=True)
class Lookup:
    """What the cache needs of a call."""
    key: str
    model: str
    version: str
    bypass: bool = False


class ResultCache:
    def __init__(self, ttl_s: float, local: LocalTier | None, shared: SharedTier | None,
                 telemetry: Telemetry) -> None:
        self.ttl_s = ttl_s
        self.local = local
        self.shared = shared
        self._telemetry = telemetry
        self._in_flight: dict[str, asyncio.Future[bytes]] = {}

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0 and (self.local is not None or self.shared is not None)

    async def answer(self, lookup: Lookup, compute: Callable[[], Awaitable[bytes]]) -> bytes:
        """The cached answer for ``lookup``, or ``compute()``'s, stored for the next call."""
        if not self.enabled:
            return await compute()
        if lookup.bypass:
            self._count(lookup, "bypassed")
            value = await compute()
            self.store(lookup.key, value)
            return value
        if self.local is not None:
            cached = self.local.get(lookup.key)
            if cached is not None:
                self._count(lookup, "hit", "local")
                return cached
        leader = self._in_flight.get(lookup.key)
        if leader is not None:
            self._count(lookup, "coalesced")
            try:
                return await asyncio.shield(leader)
            except _LeaderGone:  # its failure was its own: this call computes for itself
                value = await compute()
                self.store(lookup.key, value)
                return value
        return await self._lead(lookup, compute)

    async def get_many(self, lookups: list[Lookup]) -> list[bytes | None]:
        """Cached answers for several images (None: compute it, then ``store``); counted
        like ``answer``'s lookups, without coalescing."""
        found: list[bytes | None] = [None] * len(lookups)
        shared: list[int] = []
        for i, lookup in enumerate(lookups):
            if lookup.bypass:
                self._count(lookup, "bypassed")
            elif self.local is not None and (value := self.local.get(lookup.key)) is not None:
                self._count(lookup, "hit", "local")
                found[i] = value
            else:
                shared.append(i)
        values = await asyncio.gather(*(self._shared_get(lookups[i].key) for i in shared))
        for i, value in zip(shared, values, strict=True):
            if value is None:
                self._count(lookups[i], "miss")
                continue
            self._count(lookups[i], "hit", "redis")
            found[i] = value
            if self.local is not None:
                self.local.put(lookups[i].key, value, self.ttl_s)
        return found

    async def _lead(self, lookup: Lookup, compute: Callable[[], Awaitable[bytes]]) -> bytes:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._in_flight[lookup.key] = future
        try:
            value = await self._shared_get(lookup.key)
            if value is not None:
                self._count(lookup, "hit", "redis")
                if self.local is not None:
                    self.local.put(lookup.key, value, self.ttl_s)
            else:
                self._count(lookup, "miss")
                value = await compute()
                self.store(lookup.key, value)
            future.set_result(value)
            return value
        except ProxyError as exc:
            future.set_exception(exc if exc.code in SHARED_FAILURES else _LeaderGone())
            raise
        except BaseException:
            future.set_exception(_LeaderGone())
            raise
        finally:
            del self._in_flight[lookup.key]

    async def _shared_get(self, key: str) -> bytes | None:
        if self.shared is None:
            return None
        start = time.perf_counter()
        try:
            return await self.shared.get(key)
        finally:
            self._telemetry.cache_lookup.record((time.perf_counter() - start) * 1000,
                                                {"tier": "redis"})

    def store(self, key: str, value: bytes) -> None:
        if self.local is not None:
            self.local.put(key, value, self.ttl_s)
        if self.shared is not None:
            self.shared.put(key, value, self.ttl_s)

    def _count(self, lookup: Lookup, result: str, tier: str = "") -> None:
        self._telemetry.cache_lookups.add(1, {"model": lookup.model, "version": lookup.version,
                                              "result": result, "tier": tier})

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()
