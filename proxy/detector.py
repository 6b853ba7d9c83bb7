"""``detect.v1.Detector/Detect``: validate cheaply, forward the bytes, shape the answer."""

from __future__ import annotations

import asyncio
import logging
import math
import time

from opentelemetry import trace
import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException

from detect.v1 import detect_pb2

from . import request_wire
from .admission import Admission, AtCapacity
from .catalogue import Catalogue, DetectorModel
from .config import ProxyConfig
from .batcher import MicroBatcher
from .breaker import CircuitBreaker
from .errors import ProxyError, from_upstream, is_unknown_model, upstream_code
from .image_header import ImageInfo, ImageRejected, inspect
from .pool import TritonPool
from .retry import RetryBudget, backoff_s
from .telemetry import Telemetry

log = logging.getLogger(__name__)


def _invalid(message: str) -> ProxyError:
    return ProxyError(grpc.StatusCode.INVALID_ARGUMENT, message)


# (the request without its image, the image as a view into the received bytes)
Parsed = tuple[detect_pb2.DetectRequest, bytes | memoryview]


def parse_request(data: bytes) -> Parsed | None:
    """Deserializer that never raises: gRPC would turn a parse error into UNKNOWN with a
    Python exception text; the handler answers INVALID_ARGUMENT instead."""
    return request_wire.parse(data)


def method_handlers(service: "DetectorService") -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler("detect.v1.Detector", {
        "Detect": grpc.unary_unary_rpc_method_handler(
            service.Detect, request_deserializer=parse_request,
            response_serializer=detect_pb2.DetectResponse.SerializeToString),
    })


# gRPC cancels the handler when the caller's deadline passes, as when the caller cancels;
# what is left of the deadline tells them apart (timers fire a little early or late).
DEADLINE_SLACK_S = 0.005


def _cancellation(context: grpc.aio.ServicerContext) -> tuple[grpc.StatusCode, str]:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= DEADLINE_SLACK_S:
        return grpc.StatusCode.DEADLINE_EXCEEDED, "the caller's deadline passed"
    return grpc.StatusCode.CANCELLED, "cancelled by the caller"


def validate_fields(request: detect_pb2.DetectRequest) -> None:
    score = request.min_score
    if math.isnan(score) or not 0.0 <= score <= 1.0:
        raise _invalid(f"min_score must be in [0, 1], got {score}")
    if request.max_detections < 0:
        raise _invalid(f"max_detections must be >= 0, got {request.max_detections}")


def build_response(result: triton_aio.InferResult, row: int, model: DetectorModel,
                   info: ImageInfo, request: detect_pb2.DetectRequest) -> detect_pb2.DetectResponse:
    """The caller's answer from row ``row`` of a (possibly batched) ModelInfer result."""
    take = (lambda a: a[row]) if model.batching else (lambda a: a)
    count = int(take(result.as_numpy("num_detections")).reshape(-1)[0])
    boxes = take(result.as_numpy("detection_boxes")).reshape(-1, 4)[:count]
    scores = take(result.as_numpy("detection_scores")).reshape(-1)[:count]
    classes = take(result.as_numpy("detection_classes")).reshape(-1)[:count]
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] >= request.min_score]
    if request.max_detections:
        order = order[: request.max_detections]
    response = result.get_response()
    out = detect_pb2.DetectResponse(model=response.model_name,
                                    model_version=response.model_version,
                                    image_width=info.width, image_height=info.height)
    for i in order:
        x_min, y_min, x_max, y_max = (float(v) for v in boxes[i])
        class_id = int(classes[i])
        out.detections.add(
            box=detect_pb2.BoundingBox(x_min=x_min, y_min=y_min, x_max=x_max, y_max=y_max),
            score=float(scores[i]), class_id=class_id, label=model.label(class_id))
    return out


class DetectorService:
    def __init__(self, config: ProxyConfig, pool: TritonPool, catalogue: Catalogue,
                 telemetry: Telemetry, breaker: CircuitBreaker, admission: Admission) -> None:
        self._config = config
        self._admission = admission
        self._breaker = breaker
        self._budget = RetryBudget(config.retry_budget_ratio)
        self._limits = config.image_limits
        self._pool = pool
        self._catalogue = catalogue
        self._telemetry = telemetry
        self._in_flight = 0
        self._batcher = None
        if config.batch_max_wait_us > 0:
            self._batcher = MicroBatcher(config.batch_max_wait_us / 1e6, config.batch_max_size,
                                         self._infer)

    async def Detect(self, parsed: Parsed | None,
                     context: grpc.aio.ServicerContext) -> detect_pb2.DetectResponse:
        start = time.perf_counter()
        metadata = dict(context.invocation_metadata() or ())
        request_id = metadata.get("x-request-id", "")
        request, image = parsed if parsed is not None else (None, b"")
        model_name = (request.model if request else "") or self._config.default_model
        code = grpc.StatusCode.OK
        message = ""
        span = self._telemetry.tracer.start_span(
            "detect.v1.Detector/Detect", context=self._telemetry.extract(metadata),
            kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": "detect.v1.Detector",
                        "rpc.method": "Detect", "detect.model": model_name,
                        "detect.request_id": request_id})
        self._in_flight += 1
        self._telemetry.in_flight.add(1)
        try:
            with trace.use_span(span, end_on_exit=False):
                if request is None:
                    self._telemetry.rejected.add(1, {"reason": "malformed_request"})
                    raise _invalid("request body is not a valid detect.v1.DetectRequest")
                if self._in_flight > self._config.max_in_flight:
                    self._telemetry.rejected.add(1, {"reason": "max_in_flight"})
                    raise ProxyError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                     f"proxy is at its limit of {self._config.max_in_flight} "
                                     "calls in flight; retry with backoff")
                return await self._detect(request, image, model_name, request_id, context)
        except ProxyError as exc:
            code, message = exc.code, exc.message
        except asyncio.CancelledError:  # the caller went away or its deadline passed
            code, message = _cancellation(context)
            raise
        except Exception:
            code, message = grpc.StatusCode.INTERNAL, "internal error in the detection proxy"
            log.exception("Detect %s failed unexpectedly", model_name)
        finally:
            self._in_flight -= 1
            self._telemetry.in_flight.add(-1)
            duration_ms = (time.perf_counter() - start) * 1000
            # Callers choose model names: only known ones become metric labels, so that
            # arbitrary names cannot grow the number of series without bound.
            label = model_name if self._catalogue.known(model_name) else "(unknown)"
            self._telemetry.record_call(label, code, duration_ms)
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code != grpc.StatusCode.OK:
                span.set_status(trace.Status(trace.StatusCode.ERROR, message))
            span.end()
            if log.isEnabledFor(logging.INFO):
                log.info("Detect", extra={"fields": {
                    "request_id": request_id, "model": model_name, "code": code.name,
                    "duration_ms": round(duration_ms, 3), "client": metadata.get("x-client-id", ""),
                    "image_bytes": len(image),
                    "trace_id": f"{span.get_span_context().trace_id:032x}",
                    **({"error": message} if message else {})}})
        await context.abort(code, message)

    async def _detect(self, request: detect_pb2.DetectRequest, image: bytes | memoryview,
                      model_name: str, request_id: str,
                      context: grpc.aio.ServicerContext) -> detect_pb2.DetectResponse:
        validate_fields(request)
        self._telemetry.image_size.record(len(image))
        try:
            info = inspect(image, self._limits)
        except ImageRejected as exc:
            self._telemetry.rejected.add(1, {"reason": "invalid_image"})
            raise _invalid(str(exc)) from None
        model = await self._catalogue.get(model_name)
        try:
            async with self._admission.slot(self._remaining(context)):
                remaining = self._remaining(context)
                if remaining <= 0:
                    raise ProxyError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                     "deadline exceeded before the call")
                if self._batcher is not None and model.max_batch_size > 1:
                    deadline = asyncio.get_running_loop().time() + remaining
                    result, row = await self._batcher.submit(model, image, deadline, request_id)
                else:
                    result, row = await self._infer(model, [image], remaining, [request_id]), 0
        except AtCapacity as exc:
            self._telemetry.rejected.add(1, {"reason": "at_capacity"})
            raise ProxyError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"the service is at capacity: the expected wait "
                             f"({exc.expected_wait_s:.1f}s) is longer than this call can wait "
                             f"({exc.affordable_s:.1f}s); retry with backoff") from None
        return build_response(result, row, model, info, request)

    def _remaining(self, context: grpc.aio.ServicerContext) -> float:
        """Seconds left of the caller's deadline (the default upstream timeout without one)."""
        remaining = context.time_remaining()
        return self._config.upstream_timeout_ms / 1000 if remaining is None else remaining

    async def _infer(self, model: DetectorModel, images: list[bytes | memoryview], timeout_s: float,
                     request_ids: list[str]) -> triton_aio.InferResult:
        """One ModelInfer for ``images`` (one row each), with breaker and retries."""
        # A single call's id travels as Triton's request id; a batch's ids as a list.
        request_id = ",".join(i for i in request_ids if i)
        body = model.request.build(images, request_id)
        deadline = time.monotonic() + timeout_s
        self._budget.record_call()
        self._telemetry.upstream_batch.record(len(images), {"model": model.name})
        attempt = 0
        while True:
            if not self._breaker.allow():
                self._telemetry.rejected.add(1, {"reason": "circuit_open"})
                raise ProxyError(grpc.StatusCode.UNAVAILABLE,
                                 "the model server is unavailable (circuit breaker open; next "
                                 f"probe in {self._breaker.retry_in():.1f}s); retry with backoff")
            try:
                result = await self._call(model, body, deadline - time.monotonic(), request_id)
                self._breaker.success()
                return result
            except InferenceServerException as exc:
                code = upstream_code(exc)
                if code == grpc.StatusCode.UNAVAILABLE:
                    self._breaker.failure()
                else:
                    self._breaker.release()
                if is_unknown_model(exc):
                    self._catalogue.forget(model.name)
                    await self._catalogue.get(model.name)  # raises NOT_FOUND listing models
                delay = backoff_s(attempt, self._config.retry_backoff_base_ms / 1000,
                                  self._config.retry_backoff_max_ms / 1000)
                if (code != grpc.StatusCode.UNAVAILABLE
                        or attempt >= self._config.retry_max_attempts
                        or deadline - time.monotonic() <= delay
                        or not self._budget.try_spend()):
                    raise from_upstream(exc, model.name) from None
            attempt += 1
            self._telemetry.retries.add(1, {"model": model.name})
            log.debug("retrying %s after UNAVAILABLE (attempt %d) in %.0f ms", model.name,
                      attempt, delay * 1000)
            await asyncio.sleep(delay)

    async def _call(self, model: DetectorModel, body: bytes, timeout_s: float,
                    request_id: str) -> triton_aio.InferResult:
        """One ModelInfer, traced and timed."""
        start = time.perf_counter()
        outcome = "OK"
        with self._telemetry.tracer.start_as_current_span(
                "inference.GRPCInferenceService/ModelInfer", kind=trace.SpanKind.CLIENT,
                attributes={"rpc.system": "grpc", "rpc.service": "inference.GRPCInferenceService",
                            "rpc.method": "ModelInfer", "detect.model": model.name}) as span:
            # The request id travels both as Triton's request id and as the header Envoy's
            # egress logs; the trace context as traceparent metadata.
            headers = self._telemetry.inject({"x-request-id": request_id} if request_id else {})
            try:
                with self._pool.lease_infer() as model_infer:
                    return await model_infer(body, timeout_s, tuple(headers.items()))
            except InferenceServerException as exc:
                outcome = exc.status() or "UNKNOWN"
                span.set_status(trace.Status(trace.StatusCode.ERROR, outcome))
                raise
            finally:
                self._telemetry.upstream_duration.record(
                    (time.perf_counter() - start) * 1000,
                    {"model": model.name, "status": outcome.rsplit(".", 1)[-1]})
