"""Queueing requests onto model instances, with Triton's dynamic batching rules.

Without ``dynamic_batching`` every request is its own execution. With it, requests queue and
a free instance takes as many compatible requests (same per-row shapes) as fit in
``max_batch_size``. It runs at once when the batch is full or reaches the largest
``preferred_batch_size``; otherwise it waits for more until the oldest request has waited
``max_queue_delay_microseconds``, then runs the largest preferred batch it can form, or
everything it has. With a delay of 0 batches still form naturally: requests that arrive
while every instance is busy are executed together.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from dataclasses import dataclass, field

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from .backends import Backend
from .errors import InferenceError
from .request import InferRequest
from .statistics import ModelStats

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Pending:
    request: InferRequest
    future: asyncio.Future
    enqueued_ns: int
    enqueued_at: float  # loop time, for the queue delay
    key: tuple = field(default=())


class Scheduler:
    def __init__(self, config: mc.ModelConfig, backend: Backend, stats: ModelStats) -> None:
        self._config = config
        self._backend = backend
        self._stats = stats
        self._dynamic = config.HasField("dynamic_batching")
        self._max_batch = max(config.max_batch_size, 1)
        dyn = config.dynamic_batching
        self._preferred = sorted(set(dyn.preferred_batch_size))
        self._delay_s = dyn.max_queue_delay_microseconds / 1e6
        self._queue: collections.deque[_Pending] = collections.deque()
        self._arrived = asyncio.Event()
        self._free: asyncio.Queue[int] = asyncio.Queue()
        for instance in range(backend.instance_count):
            self._free.put_nowait(instance)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=backend.instance_count, thread_name_prefix=f"{config.name}-instance")
        self._running: set[asyncio.Task] = set()
        self._task = asyncio.get_running_loop().create_task(self._dispatch())

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def infer(self, request: InferRequest) -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        pending = _Pending(request, loop.create_future(), time.perf_counter_ns(), loop.time(),
                           request.batch_key() if self._dynamic else ())
        # A caller that went away leaves its outcome unread; do not log it as lost.
        pending.future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._queue.append(pending)
        self._arrived.set()
        # Shield: a caller that goes away must not cancel rows that share an execution.
        return await asyncio.shield(pending.future)

    async def _dispatch(self) -> None:
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            instance = await self._free.get()
            batch = await self._form_batch()
            task = asyncio.get_running_loop().create_task(self._execute(instance, batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _compatible_prefix(self) -> tuple[list[int], bool]:
        """Cumulative batch sizes of the queue's compatible prefix, and whether the prefix
        is closed (the next request cannot join: other shapes, or it would overflow)."""
        sizes: list[int] = []
        total = 0
        first = self._queue[0].key
        for pending in self._queue:
            rows = pending.request.batch_size
            if (sizes and pending.key != first) or total + rows > self._max_batch:
                return sizes, True
            total += rows
            sizes.append(total)
        return sizes, False

    async def _form_batch(self) -> list[_Pending]:
        if not self._dynamic:
            return [self._queue.popleft()]
        loop = asyncio.get_running_loop()
        deadline = self._queue[0].enqueued_at + self._delay_s
        target = self._preferred[-1] if self._preferred else self._max_batch
        while True:
            sizes, closed = self._compatible_prefix()
            if not sizes:  # a single request larger than max_batch_size; validated earlier
                count = 1
                break
            expired = loop.time() >= deadline
            if closed or sizes[-1] >= target or expired:
                count = len(sizes)
                if self._preferred and not closed and sizes[-1] < self._max_batch:
                    matches = [i + 1 for i, s in enumerate(sizes) if s in self._preferred]
                    if matches:
                        count = matches[-1]
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), max(deadline - loop.time(), 0))
            except TimeoutError:
                pass
        return [self._queue.popleft() for _ in range(count)]

    async def _execute(self, instance: int, batch: list[_Pending]) -> None:
        start = time.perf_counter_ns()
        requests = [p.request for p in batch]
        try:
            execution = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._backend.execute, instance, requests)
        except Exception as exc:  # a backend bug must fail these requests, not the server
            log.exception("execution of %s failed", self._config.name)
            error = InferenceError.internal(f"model '{self._config.name}' failed: {exc}")
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        finally:
            self._free.put_nowait(instance)
        succeeded = [p for p, r in zip(batch, execution.results, strict=True)
                     if not isinstance(r, Exception)]
        if succeeded:
            self._stats.record_execution(
                sum(p.request.batch_size for p in succeeded), len(succeeded),
                [start - p.enqueued_ns for p in succeeded],
                execution.compute_input_ns, execution.compute_infer_ns,
                execution.compute_output_ns)
        for pending, result in zip(batch, execution.results, strict=True):
            if pending.future.done():
                continue
            if isinstance(result, Exception):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)

    async def close(self) -> None:
        self._task.cancel()
        # Requests still queued (a BLS call from an execution that outlived the shutdown's
        # grace period) fail rather than leave their callers waiting forever.
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(InferenceError.unavailable(
                    f"[request id: {pending.request.request_id or '<id_unknown>'}] Server is "
                    "stopping, scheduler for model has stopped accepting new inference requests"))
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        self._pool.shutdown(wait=True)
        self._backend.close()
