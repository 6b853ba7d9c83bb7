"""Health that tells the truth about the upstream: SERVING only while Triton is ready and
the default model is ready, checked in the background on every pooled connection (with
Triton groups: while some group answers, see ``router``)."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from grpc_health.v1 import health, health_pb2

from . import contract

log = logging.getLogger(__name__)

SERVICES = ("", contract.SERVICE)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Readiness(Protocol):
    async def ready(self, model: str, timeout_s: float) -> tuple[bool, str]: ...


class ReadinessWatcher:
    def __init__(self, upstream: Readiness, servicer: health.aio.HealthServicer,
                 model: str, interval_s: float, failure_threshold: int = 2) -> None:
        self._upstream = upstream
        self._servicer = servicer
        self._model = model
        self._interval = interval_s
        self._failure_threshold = failure_threshold
        self._failures = 0
        self.serving: bool | None = None
        self.drained = False
        self._task: asyncio.Task[None] | None = None

    async def check(self) -> tuple[bool, str]:
        return await self._upstream.ready(self._model, timeout_s=max(self._interval, 0.5))

    async def update(self) -> None:
        ok, why = await self.check()
        self._failures = 0 if ok else self._failures + 1
        if self.drained:
            ok, why = False, "drained by the operator (SIGUSR2 resumes)"
        elif not ok and self.serving and self._failures < self._failure_threshold:
            return  # one failed check is not an outage; the next one decides
        if ok != self.serving:
            self.serving = ok
            for service in SERVICES:
                await self._servicer.set(service, SERVING if ok else NOT_SERVING)
            log.log(logging.INFO if ok else logging.WARNING,
                    "health %s: %s", "SERVING" if ok else "NOT_SERVING", why)

    async def _run(self) -> None:
        while True:
            await self.update()
            await asyncio.sleep(self._interval)

    def set_drained(self, drained: bool) -> None:
        """Operator drain: report NOT_SERVING while still serving whatever arrives."""
        self.drained = drained
        asyncio.get_running_loop().create_task(self.update())

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
