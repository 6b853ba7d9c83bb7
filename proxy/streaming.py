"""A stream of answers to a stream of requests, with a bounded window in flight.

The next request is read only when fewer than ``window`` are unanswered, so a sender faster
than the models is held back by HTTP/2 flow control rather than buffered here: memory per
stream is bounded by the window, however fast the caller sends. Answers come in request
order (a finished answer waits for the ones before it, still inside the window) or, when
asked, as each finishes. An error while reading (a limit, a malformed request) ends the
stream after every accepted request has been answered; when the caller goes away, the work
in flight is cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

Request = TypeVar("Request")
Answer = TypeVar("Answer")

_END = object()


async def answer_stream(requests: AsyncIterator[Request],
                        answer: Callable[[Request], Coroutine[Any, Any, Answer]], window: int,
                        ordered: bool = True) -> AsyncIterator[Answer]:
    """``answer(request)`` for each request, at most ``window`` at a time; ``answer`` should
    not raise (a per-request failure is an answer)."""
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(window)
    done: asyncio.Queue[object] = asyncio.Queue()
    working: set[asyncio.Task[Answer]] = set()
    failure: list[BaseException] = []

    async def read() -> None:
        try:
            async for request in requests:
                await slots.acquire()
                task: asyncio.Task[Answer] = loop.create_task(answer(request))
                working.add(task)
                if ordered:
                    done.put_nowait(task)
                else:
                    task.add_done_callback(done.put_nowait)
        except Exception as exc:
            failure.append(exc)
        finally:
            done.put_nowait(_END)

    reader = loop.create_task(read())
    try:
        ended = False
        while not (ended and not working):
            item = await done.get()
            if item is _END:
                ended = True
                continue
            assert isinstance(item, asyncio.Task)
            result: Answer = await item
            working.discard(item)
            slots.release()
            yield result
        if failure:
            raise failure[0]
    finally:
        reader.cancel()
        for task in working:
            task.cancel()
