"""The shared cache tier in Redis, failing open.

Redis is an optimisation, never a dependency: every command is bounded by a timeout (a slow
lookup is a miss), every failure is a miss or a store that did not happen, and after one the
tier is skipped for ``retry_s`` so that an outage costs calls nothing, not a timeout each.
The client reconnects by itself at the next command after that pause; the idle connections
are dropped at the first failure, since a restarted Redis leaves them dead without the client
noticing, and each would otherwise fail one command (and pause the tier again) once Redis is
back. Stores are sent in the background, at most ``MAX_PENDING_STORES`` at a time: a call
never waits for one.
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .telemetry import Telemetry

log = logging.getLogger(__name__)

MAX_PENDING_STORES = 64
# Connections to Redis per proxy process; a lookup waits for one when all are busy.
MAX_CONNECTIONS = 32


class RedisTier:
    def __init__(self, url: str, timeout_s: float, retry_s: float, telemetry: Telemetry) -> None:
        self.url = url
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        self._telemetry = telemetry
        self._client = Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0), max_connections=MAX_CONNECTIONS)
        self._skip_until = 0.0
        self._stores: set[asyncio.Task[None]] = set()
        self._dropping: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        """False while the tier is skipped after a failure."""
        return time.monotonic() >= self._skip_until

    async def get(self, key: str) -> bytes | None:
        if not self.up:
            return None
        try:
            value = await asyncio.wait_for(self._client.get(key), self._timeout_s)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("get", exc)
            return None
        return value if isinstance(value, bytes) else None

    def put(self, key: str, value: bytes, ttl_s: float) -> None:
        if not self.up or len(self._stores) >= MAX_PENDING_STORES:
            return
        task = asyncio.get_running_loop().create_task(self._set(key, value, ttl_s))
        self._stores.add(task)
        task.add_done_callback(self._stores.discard)

    async def _set(self, key: str, value: bytes, ttl_s: float) -> None:
        try:
            await asyncio.wait_for(self._client.set(key, value, px=max(1, int(ttl_s * 1000))),
                                   self._timeout_s)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("set", exc)

    def _failed(self, op: str, exc: BaseException) -> None:
        self._telemetry.cache_errors.add(1, {"tier": "redis", "op": op})
        if self.up:
            log.warning("redis %s failed (%s); skipping Redis for %.1fs", op,
                        type(exc).__name__ if not str(exc) else exc, self._retry_s)
            self._drop_idle_connections()
        self._skip_until = time.monotonic() + self._retry_s

    def _drop_idle_connections(self) -> None:
        """Closes the pool's idle connections (those in use fail or finish on their own); the
        next command after the pause opens a fresh one."""
        if self._dropping is not None and not self._dropping.done():
            return
        pool = self._client.connection_pool
        self._dropping = asyncio.get_running_loop().create_task(
            pool.disconnect(inuse_connections=False))
        self._dropping.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def close(self) -> None:
        for task in [*self._stores, *([self._dropping] if self._dropping else [])]:
            task.cancel()
        await self._client.aclose()
