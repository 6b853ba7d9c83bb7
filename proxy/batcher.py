"""Request aggregation: concurrent Detect calls for one model become one ModelInfer.

A call waits for company only while the model already has a batch in flight upstream: with
nothing in flight the backend is idle and waiting would only add latency, so the call goes
at once (at low load aggregation costs nothing). Otherwise calls wait at most
``max_wait_s``, never more than a tenth of the time their deadline leaves them, and a batch
is sent as soon as it is full (the model's max_batch_size, or a smaller configured cap) or
as soon as the model has nothing in flight any more. Each caller gets its own row of the
answer, or its own error: when Triton rejects a batch as invalid, its rows are sent again
one by one, so that one bad image does not fail the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from .catalogue import DetectorModel
from .errors import ProxyError

# A call waits for company at most this share of the time its deadline leaves it; the rest
# belongs to the upstream call.
MAX_WAIT_SHARE = 0.1


@dataclass(eq=False)
class _Pending:
    image: bytes | memoryview
    deadline: float
    request_id: str
    future: asyncio.Future
    flush_by: float = 0.0  # loop time by which this call's batch must be sent


@dataclass(eq=False)
class _Queue:
    model: DetectorModel
    pending: list[_Pending] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None
    in_flight: int = 0  # batches of this model sent and not answered yet


# send(model, images, timeout_s, request_ids) -> the InferResult of one upstream call.
Send = Callable[[DetectorModel, list[bytes | memoryview], float, list[str]], Awaitable[object]]


class MicroBatcher:
    def __init__(self, max_wait_s: float, max_size: int, send: Send,
                 on_batch: Callable[[str, int], None] | None = None) -> None:
        self._max_wait = max_wait_s
        self._max_size = max_size
        self._send = send
        self._on_batch = on_batch
        self._queues: dict[str, _Queue] = {}
        self._tasks: set[asyncio.Task] = set()

    def _limit(self, model: DetectorModel) -> int:
        cap = model.max_batch_size or 1
        return min(cap, self._max_size) if self._max_size else cap

    async def submit(self, model: DetectorModel, image: bytes | memoryview, deadline: float,
                     request_id: str):
        """(result, row) for this caller's image, or the upstream error for it.
        ``deadline`` is in the event loop's clock (``loop.time()``)."""
        loop = asyncio.get_running_loop()
        queue = self._queues.setdefault(model.name, _Queue(model))
        now = loop.time()
        if queue.in_flight == 0 and not queue.pending:
            # Nothing to wait for: the call goes now, from the caller's own task (no future,
            # no extra task), so that aggregation costs nothing at low load.
            queue.in_flight += 1
            try:
                if self._on_batch:
                    self._on_batch(model.name, 1)
                return await self._send(model, [image], deadline - now, [request_id]), 0
            finally:
                self._answered(queue)
        pending = _Pending(image, deadline, request_id, loop.create_future(),
                           now + min(self._max_wait, max(0.0, deadline - now) * MAX_WAIT_SHARE))
        pending.future.add_done_callback(lambda f: f.cancelled() or f.exception())
        queue.pending.append(pending)
        if len(queue.pending) >= self._limit(model):
            self._flush(queue)
        else:
            self._schedule(queue)
        return await asyncio.shield(pending.future)

    def _schedule(self, queue: _Queue) -> None:
        """Flush when the most pressed call has waited all it may."""
        loop = asyncio.get_running_loop()
        when = min(p.flush_by for p in queue.pending)
        if queue.timer is not None:
            if queue.timer.when() <= when:
                return
            queue.timer.cancel()
        queue.timer = loop.call_at(max(when, loop.time()), self._flush, queue)

    def _flush(self, queue: _Queue) -> None:
        if queue.timer is not None:
            queue.timer.cancel()
            queue.timer = None
        limit = self._limit(queue.model)
        batch, queue.pending = queue.pending[:limit], queue.pending[limit:]
        if queue.pending:
            self._schedule(queue)
        if batch:
            queue.in_flight += 1
            task = asyncio.get_running_loop().create_task(self._run(queue.model, batch))
            self._tasks.add(task)
            task.add_done_callback(lambda t: self._sent(queue, t))

    def _sent(self, queue: _Queue, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._answered(queue)

    def _answered(self, queue: _Queue) -> None:
        """A batch was answered: calls still waiting go now if nothing else is in flight."""
        queue.in_flight -= 1
        if queue.in_flight == 0 and queue.pending:
            self._flush(queue)

    async def _run(self, model: DetectorModel, batch: list[_Pending]) -> None:
        if self._on_batch:
            self._on_batch(model.name, len(batch))
        timeout = max(p.deadline for p in batch) - asyncio.get_running_loop().time()
        try:
            result = await self._send(model, [p.image for p in batch], timeout,
                                      [p.request_id for p in batch])
        except ProxyError as exc:
            if exc.code == grpc.StatusCode.INVALID_ARGUMENT and len(batch) > 1:
                await asyncio.gather(*(self._run(model, [p]) for p in batch))
                return
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        except Exception as exc:  # keep every caller answered
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        for row, p in enumerate(batch):
            if not p.future.done():
                p.future.set_result((result, row))
