"""``detect.v1.Detector/Detect``: parse, validate, admit, send, answer.

The handler reads top to bottom; what it calls owns the rest: ``observed`` the span, the
metrics and the access log; ``admission`` the upstream slots; ``batcher`` aggregation;
``upstream`` the channels, the breaker and retries. Any outcome other than OK is raised as
``ProxyError`` and becomes the call's status in ``observed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator

import grpc
import numpy as np
from tritonclient.grpc import InferResult

from detect.v1 import detect_pb2

from . import contract, request_wire
from .admission import Admission, AtCapacity
from .batcher import MicroBatcher
from .catalogue import Catalogue
from .errors import ProxyError, invalid
from .image_header import ImageInfo, ImageLimits, ImageRejected, inspect
from .models import DetectorModel, Image
from .observed import CallObserver, Context
from .telemetry import Telemetry

# (the request without its image, the image as a view into the received bytes)
Parsed = tuple[detect_pb2.DetectRequest, Image]


def parse_request(data: bytes) -> Parsed | None:
    """Deserializer that never raises: gRPC would turn a parse error into UNKNOWN with a
    Python exception text; the handler answers INVALID_ARGUMENT instead."""
    return request_wire.parse(data)


def validate_fields(request: detect_pb2.DetectRequest) -> None:
    score = request.min_score
    if math.isnan(score) or not 0.0 <= score <= 1.0:
        raise invalid(f"min_score must be in [0, 1], got {score}")
    if request.max_detections < 0:
        raise invalid(f"max_detections must be >= 0, got {request.max_detections}")


def build_response(result: InferResult, row: int, model: DetectorModel, info: ImageInfo,
                   request: detect_pb2.DetectRequest) -> detect_pb2.DetectResponse:
    """The caller's answer from row ``row`` of a (possibly batched) ModelInfer result."""
    def output(name: str) -> np.ndarray:
        array: np.ndarray = result.as_numpy(name)
        return array[row] if model.batching else array

    count = int(output(contract.NUM_DETECTIONS).reshape(-1)[0])
    boxes = output(contract.DETECTION_BOXES).reshape(-1, 4)[:count]
    scores = output(contract.DETECTION_SCORES).reshape(-1)[:count]
    classes = output(contract.DETECTION_CLASSES).reshape(-1)[:count]
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


def _request_id(context: Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id":
            return str(value)
    return ""


class DetectorService:
    def __init__(self, catalogue: Catalogue, admission: Admission, batcher: MicroBatcher,
                 limits: ImageLimits, default_model: str, default_timeout_s: float,
                 telemetry: Telemetry) -> None:
        self._catalogue = catalogue
        self._admission = admission
        self._batcher = batcher
        self._limits = limits
        self._default_model = default_model
        self._default_timeout_s = default_timeout_s
        self._telemetry = telemetry

    async def Detect(self, parsed: Parsed | None,
                     context: Context) -> detect_pb2.DetectResponse:
        if parsed is None:
            self._telemetry.rejected.add(1, {"reason": "malformed_request"})
            raise invalid("request body is not a valid detect.v1.DetectRequest")
        request, image = parsed
        validate_fields(request)
        info = self._inspect(image)
        model = await self._catalogue.get(self.model_name(request))
        async with self._admitted(context):
            result, row = await self._send(model, image, context)
        return build_response(result, row, model, info, request)

    async def ListModels(self, request: detect_pb2.ListModelsRequest,
                         context: Context) -> detect_pb2.ListModelsResponse:
        limits = detect_pb2.ImageLimits(max_bytes=self._limits.max_bytes,
                                        max_width=self._limits.max_width,
                                        max_height=self._limits.max_height)
        return detect_pb2.ListModelsResponse(default_model=self._default_model, models=[
            detect_pb2.ModelInfo(name=entry.model.name, versions=entry.versions,
                                 labels=entry.model.labels, limits=limits)
            for entry in await self._catalogue.listing()])

    def model_name(self, request: detect_pb2.DetectRequest) -> str:
        return request.model or self._default_model

    def _inspect(self, image: Image) -> ImageInfo:
        self._telemetry.image_size.record(len(image))
        try:
            return inspect(image, self._limits)
        except ImageRejected as exc:
            self._telemetry.rejected.add(1, {"reason": "invalid_image"})
            raise invalid(str(exc)) from None

    @contextlib.asynccontextmanager
    async def _admitted(self, context: Context) -> AsyncIterator[None]:
        """An upstream slot, or RESOURCE_EXHAUSTED at once when the wait for one would not
        fit the call's deadline."""
        try:
            async with self._admission.slot(self._remaining(context)):
                yield
        except AtCapacity as exc:
            self._telemetry.rejected.add(1, {"reason": "at_capacity"})
            raise ProxyError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"the service is at capacity: the expected wait "
                             f"({exc.expected_wait_s:.1f}s) is longer than this call can wait "
                             f"({exc.affordable_s:.1f}s); retry with backoff") from None

    async def _send(self, model: DetectorModel, image: Image,
                    context: Context) -> tuple[InferResult, int]:
        """This image's row of a ModelInfer answer (aggregated with others when enabled)."""
        remaining = self._remaining(context)
        if remaining <= 0:
            raise ProxyError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the call")
        deadline = asyncio.get_running_loop().time() + remaining
        try:
            return await self._batcher.submit(model, image, deadline, _request_id(context))
        except ProxyError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:  # the model went away since
                raise await self._catalogue.not_found(model.name) from None
            raise

    def _remaining(self, context: Context) -> float:
        """Seconds left of the caller's deadline (the default upstream timeout without one)."""
        remaining = context.time_remaining()
        return self._default_timeout_s if remaining is None else remaining


def method_handlers(service: DetectorService, observer: CallObserver) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(contract.SERVICE, {
        contract.DETECT: grpc.unary_unary_rpc_method_handler(
            observer.observe(contract.DETECT, service.Detect),
            request_deserializer=parse_request,
            response_serializer=detect_pb2.DetectResponse.SerializeToString),
        contract.LIST_MODELS: grpc.unary_unary_rpc_method_handler(
            observer.observe(contract.LIST_MODELS, service.ListModels),
            request_deserializer=detect_pb2.ListModelsRequest.FromString,
            response_serializer=detect_pb2.ListModelsResponse.SerializeToString),
    })
