"""Guard decisions shared by every proxy through Redis publish/subscribe.

Each proxy judges its own calls. When one takes a variant out of the split, or an operator
puts one back through any proxy, the message reaches every other proxy on the same Redis
and they follow at once: a failing candidate costs the fleet one window's budget rather than
one per proxy, and one restore (through Envoy's front, which reaches one proxy) reaches all.
A decision applies only where the experiment in force has the same model, salt and variant.

Redis stays an optimisation: while it is unreachable each proxy judges and is restored on
its own (the publish is dropped and counted, the subscriber reconnects every ``retry_s``),
and a proxy that starts or reconnects later learns only the decisions made after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from dataclasses import asdict

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .experiments import Experiments, GuardEvent
from .telemetry import Telemetry

log = logging.getLogger(__name__)

CHANNEL = "detect:experiments:guard"
MAX_PENDING_PUBLISHES = 16
# A subscriber only reads, so a Redis gone without a reset (its node lost) would leave it
# waiting for ever: TCP keepalive probes an idle connection after 10 s, every 5 s, and gives
# up after 3 unanswered, so the subscriber notices within about 25 s and subscribes again.
KEEPALIVE = {socket.TCP_KEEPIDLE: 10, socket.TCP_KEEPINTVL: 5, socket.TCP_KEEPCNT: 3}
MIN_RESUBSCRIBE_S = 0.5  # also with --redis-retry-ms 0


class GuardSync:
    def __init__(self, url: str, experiments: Experiments, timeout_s: float, retry_s: float,
                 telemetry: Telemetry) -> None:
        self.url = url
        self._experiments = experiments
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        self._telemetry = telemetry
        self._client = _client(url, timeout_s)
        self._publishes: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Task[None] | None = None
        experiments.on_guard = self.publish

    def start(self) -> None:
        self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def close(self) -> None:
        for task in (self._listener, *self._publishes):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._client.aclose()

    def publish(self, event: GuardEvent) -> None:
        """Tell the other proxies, in the background: the decision here is already made."""
        if len(self._publishes) >= MAX_PENDING_PUBLISHES:
            self._count("dropped", event)
            return
        task = asyncio.get_running_loop().create_task(self._publish(event))
        self._publishes.add(task)
        task.add_done_callback(self._publishes.discard)

    async def _publish(self, event: GuardEvent) -> None:
        try:
            await asyncio.wait_for(self._client.publish(CHANNEL, json.dumps(asdict(event))),
                                   self._timeout_s)
        except (RedisError, OSError, TimeoutError) as exc:
            self._count("dropped", event)
            log.warning("experiment %s: the other proxies were not told that variant %s was %s "
                        "(%s)", event.model, event.variant, _what(event),
                        exc or type(exc).__name__)
            return
        self._count("sent", event)

    async def _listen(self) -> None:
        failing = False  # one warning per outage, not one per retry
        while True:
            try:
                async with self._client.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    log.info("guard decisions shared through %s", self.url)
                    failing = False
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self._receive(message["data"])
            except (RedisError, OSError) as exc:
                log.log(logging.DEBUG if failing else logging.WARNING,
                        "guard decisions not shared (%s); subscribing again every %.1fs",
                        exc or type(exc).__name__, self._retry_s)
                failing = True
                await asyncio.sleep(max(self._retry_s, MIN_RESUBSCRIBE_S))

    def _receive(self, data: bytes) -> None:
        try:
            event = GuardEvent(**json.loads(data))
        except (ValueError, TypeError) as exc:
            log.warning("ignored a guard message that is not one (%s): %r", exc, data[:200])
            return
        if self._experiments.apply(event):
            self._count("applied", event)

    def _count(self, outcome: str, event: GuardEvent) -> None:
        self._telemetry.guard_messages.add(1, {"outcome": outcome, "action": event.action,
                                               "model": event.model, "variant": event.variant})


def _client(url: str, timeout_s: float) -> Redis:
    if url.startswith("unix:"):  # no TCP, no keepalive: the peer is on this host
        return Redis.from_url(url, socket_connect_timeout=timeout_s)
    return Redis.from_url(url, socket_connect_timeout=timeout_s, socket_keepalive=True,
                          socket_keepalive_options=KEEPALIVE)


def _what(event: GuardEvent) -> str:
    return "taken out" if event.action == GuardEvent.OUT else "put back"
