"""Request aggregation: concurrent Detect calls for one model become one ModelInfer.

A call waits for company only while the model already has a batch in flight upstream: with
nothing in flight the backend is idle and waiting would only add latency, so the call goes
at once (at low load aggregation costs nothing). Otherwise calls wait at most
``max_wait_s``, never more than a tenth of the time their deadline leaves them, and a batch
is sent as soon as it is full (the model's max_batch_size, or a smaller configured cap) or
as soon as the model has nothing in flight any more. Each caller gets its own row of the
answer, or its own error: when Triton rejects a batch as invalid, its rows are sent again
one by one, so that one bad image does not fail the others. With aggregation off, or for a
model that does not batch, every call goes at once on its own.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from tritonclient.grpc import InferResult

from .errors import ProxyError
from .models import DetectorModel, Image

# A call waits for company at most this share of the time its deadline leaves it; the rest
# belongs to the upstream call.
MAX_WAIT_SHARE = 0.1


# (the upstream answer, the caller's row in it)
Answer = tuple[InferResult, int]


class Upstream(Protocol):
    async def infer(self, model: DetectorModel, images: list[Image], timeout_s: float,
                    request_ids: list[str]) -> InferResult: ...


@dataclass(eq=False)
class _Pending:
    image: Image
    deadline: float
    request_id: str
    future: asyncio.Future[Answer]
    flush_by: float = 0.0  # loop time by which this call's batch must be sent


@dataclass(eq=False)
class _Queue:
    model: DetectorModel
    pending: list[_Pending] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None
    in_flight: int = 0  # batches of this model sent and not answered yet


class MicroBatcher:
    def __init__(self, upstream: Upstream, max_wait_s: float, max_size: int) -> None:
        self._upstream = upstream
        self._max_wait = max_wait_s
        self._max_size = max_size
        self._queues: dict[tuple[str, str], _Queue] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _limit(self, model: DetectorModel) -> int:
        cap = model.max_batch_size or 1
        return min(cap, self._max_size) if self._max_size else cap

    async def submit(self, model: DetectorModel, image: Image, deadline: float,
                     request_id: str) -> Answer:
        """(result, row) for this caller's image, or the upstream error for it.
        ``deadline`` is in the event loop's clock (``loop.time()``)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._max_wait <= 0 or model.max_batch_size <= 1:
            return await self._upstream.infer(model, [image], deadline - now, [request_id]), 0
        queue = self._queues.setdefault((model.name, model.version), _Queue(model))
        if queue.in_flight == 0 and not queue.pending:
            # Nothing to wait for: the call goes now, from the caller's own task (no future,
            # no extra task), so that aggregation costs nothing at low load.
            queue.in_flight += 1
            try:
                return await self._upstream.infer(model, [image], deadline - now,
                                                  [request_id]), 0
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

    async def submit_batch(self, model: DetectorModel, images: list[Image], deadline: float,
                           request_id: str) -> list[Answer | ProxyError]:
        """One caller's several images, sent at once as batches of the model's
        max_batch_size: each image's (result, row), or its own error."""
        loop = asyncio.get_running_loop()
        pending = [_Pending(image, deadline, request_id, loop.create_future())
                   for image in images]
        size = model.max_batch_size or 1
        await asyncio.gather(*(self._run(model, pending[i:i + size])
                               for i in range(0, len(pending), size)))
        outcomes: list[Answer | ProxyError] = []
        for p in pending:
            error = p.future.exception()
            if error is None:
                outcomes.append(p.future.result())
            elif isinstance(error, ProxyError):
                outcomes.append(error)
            else:
                raise error
        return outcomes

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

    def _sent(self, queue: _Queue, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._answered(queue)

    def _answered(self, queue: _Queue) -> None:
        """A batch was answered: calls still waiting go now if nothing else is in flight."""
        queue.in_flight -= 1
        if queue.in_flight == 0 and queue.pending:
            self._flush(queue)

    async def _run(self, model: DetectorModel, batch: list[_Pending]) -> None:
        timeout = max(p.deadline for p in batch) - asyncio.get_running_loop().time()
        try:
            result = await self._upstream.infer(model, [p.image for p in batch], timeout,
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
