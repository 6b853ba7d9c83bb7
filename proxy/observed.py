"""Per-call observability, kept out of the handlers: every RPC runs inside ``observe``.

For each call: a SERVER span continuing the caller's trace, the in-flight gauge and its
limit, the duration metric labelled with model and status, and one access-log line. The
handler raises ``ProxyError`` for any outcome other than OK; here it becomes the call's
status, so the status a caller gets is the status that is logged and counted. A cancelled
call is told apart from one whose deadline passed; anything unexpected is INTERNAL with a
plain message (the traceback goes to the log, never to the caller).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from opentelemetry import trace

from . import contract
from .errors import ProxyError
from .telemetry import Telemetry

log = logging.getLogger(__name__)

Request = TypeVar("Request")
Response = TypeVar("Response")
Context = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[[Request, Context], Awaitable[Response]]
StreamHandler = Callable[[AsyncIterator[Request], Context], AsyncIterator[Response]]

# gRPC cancels the handler when the caller's deadline passes, as when the caller cancels;
# what is left of the deadline tells them apart (timers fire a little early or late).
DEADLINE_SLACK_S = 0.005


def _cancellation(context: Context) -> tuple[grpc.StatusCode, str]:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= DEADLINE_SLACK_S:
        return grpc.StatusCode.DEADLINE_EXCEEDED, "the caller's deadline passed"
    return grpc.StatusCode.CANCELLED, "cancelled by the caller"


@dataclass
class _Call:
    """One call being observed: what its log line, span and metrics say."""
    method: str
    model: str
    image_bytes: int
    metadata: dict[str, Any]
    span: trace.Span
    start: float = field(default_factory=time.perf_counter)
    code: grpc.StatusCode = grpc.StatusCode.OK
    message: str = ""
    version: str = ""
    variant: str = ""


_current: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("call", default=None)


def note_version(version: str, variant: str) -> None:
    """The model version (and experiment variant) answering the call being handled, for its
    metrics and log line."""
    call = _current.get()
    if call is not None:
        call.version, call.variant = version, variant


class CallObserver:
    def __init__(self, telemetry: Telemetry, max_in_flight: int,
                 describe: Callable[[object], tuple[str, int]],
                 known_model: Callable[[str], bool]) -> None:
        """``describe(request)`` gives (model name, image bytes) for labels and the log;
        only models ``known_model`` accepts become metric labels, so that names callers
        make up cannot grow the number of series without bound."""
        self._telemetry = telemetry
        self._max_in_flight = max_in_flight
        self._describe = describe
        self._known_model = known_model
        self._in_flight = 0

    def observe(self, method: str, handler: Handler[Request, Response],
                service: str = contract.SERVICE) -> Handler[Request, Response]:
        async def observed(request: Request, context: Context) -> Response:
            call = self._start(method, request, context, service)
            _current.set(call)  # each call runs in its own task
            with self._outcome(call, context), trace.use_span(call.span, end_on_exit=False):
                self._admit()
                return await handler(request, context)
            await context.abort(call.code, call.message)  # raises: the call ends with it

        return observed

    def observe_stream(self, method: str, handler: StreamHandler[Request, Response]
                       ) -> StreamHandler[Request, Response]:
        """``observe`` for a call whose requests and responses are streams."""
        async def observed(requests: AsyncIterator[Request],
                           context: Context) -> AsyncIterator[Response]:
            call = self._start(method, requests, context)
            _current.set(call)
            with self._outcome(call, context):
                self._admit()
                async for response in handler(requests, context):
                    yield response
            if call.code != grpc.StatusCode.OK:
                await context.abort(call.code, call.message)

        return observed

    @contextlib.contextmanager
    def _outcome(self, call: _Call, context: Context) -> Iterator[None]:
        """The call's status from how its handler ended, then its span, metrics and log."""
        try:
            yield
        except ProxyError as exc:
            call.code, call.message = exc.code, exc.message
        except (asyncio.CancelledError, GeneratorExit):  # the caller went away, or its deadline
            call.code, call.message = _cancellation(context)
            raise
        except Exception:
            call.code, call.message = _internal(call)
        finally:
            self._finish(call)

    def _start(self, method: str, request: object, context: Context,
               service: str = contract.SERVICE) -> _Call:
        metadata = dict(context.invocation_metadata() or ())
        model, image_bytes = self._describe(request)
        span = self._telemetry.tracer.start_span(
            f"{service}/{method}", context=self._telemetry.extract(metadata),
            kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service,
                        "rpc.method": method, "detect.model": model,
                        "detect.request_id": str(metadata.get("x-request-id", ""))})
        self._in_flight += 1
        self._telemetry.in_flight.add(1)
        return _Call(method, model, image_bytes, metadata, span)

    def _admit(self) -> None:
        if self._in_flight > self._max_in_flight:
            self._telemetry.rejected.add(1, {"reason": "max_in_flight"})
            raise ProxyError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"proxy is at its limit of {self._max_in_flight} "
                             "calls in flight; retry with backoff")

    def _finish(self, call: _Call) -> None:
        self._in_flight -= 1
        self._telemetry.in_flight.add(-1)
        duration_ms = (time.perf_counter() - call.start) * 1000
        model = call.model
        label = model if not model or self._known_model(model) else "(unknown)"
        self._telemetry.record_call(call.method, label, call.version, call.variant, call.code,
                                    duration_ms)
        span = call.span
        span.set_attribute("rpc.grpc.status_code", call.code.value[0])
        if call.code != grpc.StatusCode.OK:
            span.set_status(trace.Status(trace.StatusCode.ERROR, call.message))
        span.end()
        if log.isEnabledFor(logging.INFO):
            log.info(call.method, extra={"fields": {
                "request_id": str(call.metadata.get("x-request-id", "")), "model": model,
                "version": call.version, "variant": call.variant, "code": call.code.name,
                "duration_ms": round(duration_ms, 3),
                "client": call.metadata.get(contract.CLIENT_ID_HEADER, ""),
                "image_bytes": call.image_bytes,
                "trace_id": f"{span.get_span_context().trace_id:032x}",
                **({"error": call.message} if call.message else {})}})


def _internal(call: _Call) -> tuple[grpc.StatusCode, str]:
    log.exception("%s %s failed unexpectedly", call.method, call.model)
    return grpc.StatusCode.INTERNAL, "internal error in the detection proxy"
