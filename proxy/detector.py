"""``detect.v1.Detector/Detect``: validate cheaply, forward the bytes, shape the answer."""

from __future__ import annotations

import logging
import math
import time

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException

from detect.v1 import detect_pb2

from .catalogue import Catalogue, DetectorModel
from .config import ProxyConfig
from .errors import ProxyError, from_upstream, is_unknown_model
from .image_header import ImageInfo, ImageRejected, inspect
from .pool import TritonPool
from .telemetry import Telemetry

log = logging.getLogger("proxy.detect")


def _invalid(message: str) -> ProxyError:
    return ProxyError(grpc.StatusCode.INVALID_ARGUMENT, message)


def parse_request(data: bytes) -> detect_pb2.DetectRequest | None:
    """Deserializer that never raises: gRPC would turn a parse error into UNKNOWN with a
    Python exception text; the handler answers INVALID_ARGUMENT instead."""
    try:
        return detect_pb2.DetectRequest.FromString(data)
    except Exception:
        return None


def method_handlers(service: "DetectorService") -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler("detect.v1.Detector", {
        "Detect": grpc.unary_unary_rpc_method_handler(
            service.Detect, request_deserializer=parse_request,
            response_serializer=detect_pb2.DetectResponse.SerializeToString),
    })


def validate_fields(request: detect_pb2.DetectRequest) -> None:
    score = request.min_score
    if math.isnan(score) or not 0.0 <= score <= 1.0:
        raise _invalid(f"min_score must be in [0, 1], got {score}")
    if request.max_detections < 0:
        raise _invalid(f"max_detections must be >= 0, got {request.max_detections}")


def build_response(result: triton_aio.InferResult, model: DetectorModel, info: ImageInfo,
                   request: detect_pb2.DetectRequest) -> detect_pb2.DetectResponse:
    count = int(result.as_numpy("num_detections").reshape(-1)[0])
    boxes = result.as_numpy("detection_boxes").reshape(-1, 4)[:count]
    scores = result.as_numpy("detection_scores").reshape(-1)[:count]
    classes = result.as_numpy("detection_classes").reshape(-1)[:count]
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
                 telemetry: Telemetry) -> None:
        self._config = config
        self._limits = config.image_limits
        self._pool = pool
        self._catalogue = catalogue
        self._telemetry = telemetry
        self._in_flight = 0

    async def Detect(self, request: detect_pb2.DetectRequest | None,
                     context: grpc.aio.ServicerContext) -> detect_pb2.DetectResponse:
        start = time.perf_counter()
        if request is None:
            self._telemetry.rejected.add(1, {"reason": "malformed_request"})
            self._telemetry.record_call("", grpc.StatusCode.INVALID_ARGUMENT.name, 0.0)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "request body is not a valid detect.v1.DetectRequest")
        model_name = request.model or self._config.default_model
        code = grpc.StatusCode.OK
        if self._in_flight >= self._config.max_in_flight:
            self._telemetry.rejected.add(1, {"reason": "max_in_flight"})
            code = grpc.StatusCode.RESOURCE_EXHAUSTED
            self._telemetry.record_call(model_name, code.name, 0.0)
            await context.abort(code, f"proxy is at its limit of {self._config.max_in_flight} "
                                      "calls in flight; retry with backoff")
        self._in_flight += 1
        self._telemetry.in_flight.add(1)
        try:
            return await self._detect(request, model_name, context)
        except ProxyError as exc:
            code = exc.code
            log.info("Detect %s failed: %s %s", model_name, exc.code.name, exc.message)
            await context.abort(exc.code, exc.message)
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("Detect %s failed unexpectedly", model_name)
            await context.abort(code, "internal error in the detection proxy")
        finally:
            self._in_flight -= 1
            self._telemetry.in_flight.add(-1)
            self._telemetry.record_call(model_name, code.name,
                                        (time.perf_counter() - start) * 1000)

    async def _detect(self, request: detect_pb2.DetectRequest, model_name: str,
                      context: grpc.aio.ServicerContext) -> detect_pb2.DetectResponse:
        validate_fields(request)
        self._telemetry.image_size.record(len(request.image))
        try:
            info = inspect(request.image, self._limits)
        except ImageRejected as exc:
            self._telemetry.rejected.add(1, {"reason": "invalid_image"})
            raise _invalid(str(exc)) from None
        model = await self._catalogue.get(model_name)
        remaining = context.time_remaining()
        if remaining is None:
            remaining = self._config.upstream_timeout_ms / 1000
        elif remaining <= 0:
            raise ProxyError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the call")
        request_id = dict(context.invocation_metadata() or ()).get("x-request-id", "")
        result = await self._infer(model, request.image, remaining, request_id)
        return build_response(result, model, info, request)

    async def _infer(self, model: DetectorModel, image: bytes, timeout_s: float,
                     request_id: str) -> triton_aio.InferResult:
        tensor = triton_aio.InferInput(model.input_name, [1, 1] if model.batching else [1], "BYTES")
        tensor.set_data_from_numpy(np.array([[image]] if model.batching else [image],
                                            dtype=np.object_))
        start = time.perf_counter()
        outcome = "OK"
        try:
            with self._pool.lease() as client:
                # The id travels both as Triton's request id and as the header that Envoy's
                # egress logs, so one id follows the call through every hop.
                return await client.infer(model.name, [tensor], outputs=list(model.outputs),
                                          request_id=request_id, client_timeout=timeout_s,
                                          headers={"x-request-id": request_id} if request_id else None)
        except InferenceServerException as exc:
            outcome = exc.status() or "UNKNOWN"
            if is_unknown_model(exc):
                self._catalogue.forget(model.name)
                await self._catalogue.get(model.name)  # raises NOT_FOUND listing models
            raise from_upstream(exc, model.name) from None
        finally:
            self._telemetry.upstream_duration.record(
                (time.perf_counter() - start) * 1000,
                {"model": model.name, "rpc.grpc.status_code": outcome.rsplit(".", 1)[-1]})
