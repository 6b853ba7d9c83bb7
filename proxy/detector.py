"""``detect.v1.Detector``: parse, validate, look up, admit, send, answer.

The handlers read top to bottom; what they call owns the rest: ``observed`` the span, the
metrics and the access log; ``cache`` cached answers and coalescing; ``admission`` the
upstream slots; ``batcher`` aggregation and batches; ``upstream`` the channels, the breaker
and retries; ``streaming`` a stream's window. Any outcome other than OK is raised as
``ProxyError``: for Detect it becomes the call's status in ``observed``; in DetectBatch and
DetectStream it becomes that image's ``google.rpc.Status``.

A model's answer is kept whole (every detection it reported, best first) until the last
step, ``select``, applies the caller's ``min_score`` and ``max_detections``: the cache stores
whole answers, so a hit is filtered exactly as a miss.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass

import grpc
from tritonclient.grpc import InferResult

from detect.v1 import detect_pb2

from . import contract, request_wire
from .admission import Admission, AtCapacity
from .answers import build_response, code_name, error_result, select
from .batcher import MicroBatcher
from .cache import Lookup, ResultCache, cache_key
from .catalogue import Catalogue
from .errors import ProxyError, invalid
from .experiments import Experiments
from .image_header import ImageInfo, ImageLimits, ImageRejected, inspect
from .models import DetectorModel, Image
from .observed import CallObserver, Context, note_version
from .shadow import ShadowTraffic
from .streaming import answer_stream
from .telemetry import Telemetry

# (the request without its image, the image as a view into the received bytes)
Parsed = tuple[detect_pb2.DetectRequest, Image]


@dataclass(frozen=True)
class Budget:
    """What a call (or one image of a stream) may spend upstream."""
    deadline: float  # in the event loop's clock
    request_id: str

    def remaining(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()


@dataclass(frozen=True)
class StreamLimits:
    window: int
    max_images: int
    max_duration_s: float


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


def parse_batch(data: bytes) -> detect_pb2.DetectBatchRequest | None:
    try:
        return detect_pb2.DetectBatchRequest.FromString(data)
    except Exception:  # DecodeError, or anything protobuf raises on garbage
        return None


def parse_stream_request(data: bytes) -> detect_pb2.DetectStreamRequest | None:
    try:
        return detect_pb2.DetectStreamRequest.FromString(data)
    except Exception:
        return None


def _metadata(context: Context, key: str) -> str:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return str(value)
    return ""


def _request_id(context: Context) -> str:
    return _metadata(context, "x-request-id")


def declared_images(context: Context) -> int:
    """Images the call declared in ``x-detect-images`` (what Envoy's rate limit charged)."""
    text = _metadata(context, contract.DECLARED_IMAGES_HEADER).strip()
    if not text:
        return 1
    if not text.isdigit() or int(text) < 1:
        raise invalid(f"{contract.DECLARED_IMAGES_HEADER} must be a positive integer, "
                      f"got {text[:20]!r}")
    return int(text)


class DetectorService:
    def __init__(self, catalogue: Catalogue, admission: Admission, batcher: MicroBatcher,
                 cache: ResultCache, limits: ImageLimits, default_model: str,
                 default_timeout_s: float, max_batch_images: int, stream: StreamLimits,
                 experiments: Experiments, shadow: ShadowTraffic, telemetry: Telemetry) -> None:
        self._catalogue = catalogue
        self._admission = admission
        self._batcher = batcher
        self._cache = cache
        self._limits = limits
        self._default_model = default_model
        self._default_timeout_s = default_timeout_s
        self._max_batch_images = max_batch_images
        self._stream = stream
        self._experiments = experiments
        self._shadow = shadow
        self._telemetry = telemetry

    async def Detect(self, parsed: Parsed | None,
                     context: Context) -> detect_pb2.DetectResponse:
        if parsed is None:
            self._telemetry.rejected.add(1, {"reason": "malformed_request"})
            raise invalid("request body is not a valid detect.v1.DetectRequest")
        request, image = parsed
        validate_fields(request)
        info = self._inspect(image)
        model = self._choose(await self._catalogue.get(self.model_name(request)),
                             request.model_version, context)
        answer = await self._whole_answer(model, image, info, request.skip_cache,
                                          self._budget(context))
        note_version(answer.model_version, answer.variant)
        return select(answer, request)

    async def DetectBatch(self, request: detect_pb2.DetectBatchRequest | None,
                          context: Context) -> detect_pb2.DetectBatchResponse:
        if request is None:
            self._telemetry.rejected.add(1, {"reason": "malformed_request"})
            raise invalid("request body is not a valid detect.v1.DetectBatchRequest")
        images, declared = len(request.images), declared_images(context)
        if not images:
            raise invalid("images is empty: send at least one image")
        if images > self._max_batch_images:
            raise invalid(f"{images} images is more than the limit of "
                          f"{self._max_batch_images} per DetectBatch; split the batch")
        if images > declared:
            raise invalid(f"{images} images but {contract.DECLARED_IMAGES_HEADER} declared "
                          f"{declared}: declare every image (rate limits count them)")
        options = detect_pb2.DetectRequest(
            model=request.model, min_score=request.min_score,
            max_detections=request.max_detections, skip_cache=request.skip_cache,
            model_version=request.model_version)
        validate_fields(options)
        model = self._choose(await self._catalogue.get(self.model_name(options)),
                             options.model_version, context)
        results = [detect_pb2.DetectResult() for _ in request.images]
        valid: list[tuple[int, ImageInfo]] = []
        for i, image in enumerate(request.images):
            try:
                valid.append((i, self._inspect(image)))
            except ProxyError as exc:
                results[i].CopyFrom(error_result(exc))
        answers = await self._whole_answers(model, [(request.images[i], info)
                                                    for i, info in valid],
                                            options.skip_cache, self._budget(context))
        for (i, _), answer in zip(valid, answers, strict=True):
            if isinstance(answer, ProxyError):
                results[i].CopyFrom(error_result(answer))
            else:
                results[i].response.CopyFrom(select(answer, options))
        self._count_images(contract.DETECT_BATCH, model.name, results)
        return detect_pb2.DetectBatchResponse(results=results)

    async def DetectStream(self, requests: AsyncIterator[detect_pb2.DetectStreamRequest | None],
                           context: Context) -> AsyncIterator[detect_pb2.DetectStreamResponse]:
        declared = declared_images(context)
        limit = min(declared, self._stream.max_images)
        ends_at = time.monotonic() + self._stream.max_duration_s
        frames = self._frames(requests, limit, declared, ends_at)
        first = await anext(frames, None)
        if first is None:
            return

        async def chained() -> AsyncIterator[detect_pb2.DetectStreamRequest]:
            assert first is not None
            yield first
            async for frame in frames:
                yield frame

        async for response in answer_stream(chained(), lambda f: self._frame(f, context),
                                            self._stream.window, ordered=not first.unordered):
            yield response

    async def _frames(self, requests: AsyncIterator[detect_pb2.DetectStreamRequest | None],
                      limit: int, declared: int, ends_at: float
                      ) -> AsyncIterator[detect_pb2.DetectStreamRequest]:
        """The stream's requests, checked; a broken limit ends the stream."""
        count = 0
        iterator = aiter(requests)
        while True:
            try:
                request = await asyncio.wait_for(anext(iterator), ends_at - time.monotonic())
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise ProxyError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                 f"the stream reached its maximum duration of "
                                 f"{self._stream.max_duration_s:g}s; open a new one") from None
            if request is None:
                raise invalid("a request is not a valid detect.v1.DetectStreamRequest")
            if not request.id:
                raise invalid(f"request {count + 1} of the stream has no id")
            count += 1
            if count > limit:
                raise invalid(
                    f"the stream sent more than {limit} images: the per-stream limit is "
                    f"{self._stream.max_images} and {contract.DECLARED_IMAGES_HEADER} "
                    f"declared {declared}; declare every image, or open a new stream")
            yield request

    async def _frame(self, frame: detect_pb2.DetectStreamRequest,
                     context: Context) -> detect_pb2.DetectStreamResponse:
        """One image of a stream: its answer, or its own error."""
        out = detect_pb2.DetectStreamResponse(id=frame.id)
        request = frame.request
        model_name = self.model_name(request)
        try:
            validate_fields(request)
            info = self._inspect(request.image)
            model = self._choose(await self._catalogue.get(model_name), request.model_version,
                                 context)
            budget = self._budget(context, cap_s=self._default_timeout_s)
            answer = await self._whole_answer(model, request.image, info, request.skip_cache,
                                              budget)
            out.result.response.CopyFrom(select(answer, request))
        except ProxyError as exc:
            out.result.CopyFrom(error_result(exc))
        self._count_images(contract.DETECT_STREAM, model_name, [out.result])
        return out

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

    def _choose(self, model: DetectorModel, pinned: str, context: Context) -> DetectorModel:
        """The model at the version the call pinned, or its experiment picks for the caller."""
        client = _metadata(context, contract.CLIENT_ID_HEADER)
        key = _metadata(context, contract.ROUTING_KEY_HEADER) or client
        choice = self._experiments.choose(model.name, pinned, key, client,
                                          _metadata(context, contract.VARIANT_HEADER))
        if choice.variant:
            note_version(choice.version, choice.variant)
        return model.at(choice.version, choice.variant)

    def _inspect(self, image: Image) -> ImageInfo:
        self._telemetry.image_size.record(len(image))
        try:
            return inspect(image, self._limits)
        except ImageRejected as exc:
            self._telemetry.rejected.add(1, {"reason": "invalid_image"})
            raise invalid(str(exc)) from None

    async def _whole_answer(self, model: DetectorModel, image: Image, info: ImageInfo,
                            skip_cache: bool, budget: Budget) -> detect_pb2.DetectResponse:
        """The model's whole answer for one image: cached, or from the model server."""
        async def infer() -> detect_pb2.DetectResponse:
            async with self._admitted(budget):
                with self._experiments.outcome(model.name, model.variant):
                    result, row = await self._send(model, image, budget)
            return build_response(result, row, model, info)

        if not self._cache.enabled:
            answer = await infer()
        else:
            lookup = await self._lookup(model, image, skip_cache)
            data = await self._cache.answer(lookup, lambda: _serialized(infer()))
            answer = detect_pb2.DetectResponse.FromString(data)
            answer.variant = model.variant  # the cached answer may have come from another
        self._shadow.offer(model, image, info, answer)
        return answer

    async def _whole_answers(self, model: DetectorModel, images: list[tuple[Image, ImageInfo]],
                             skip_cache: bool, budget: Budget
                             ) -> list[detect_pb2.DetectResponse | ProxyError]:
        """The whole answers for several images: the cached ones, and the rest sent to the
        model server as one batch (several when they exceed its max_batch_size)."""
        answers: list[detect_pb2.DetectResponse | ProxyError | None] = [None] * len(images)
        lookups: list[Lookup] = []
        if self._cache.enabled:
            lookups = [await self._lookup(model, image, skip_cache) for image, _ in images]
            for i, data in enumerate(await self._cache.get_many(lookups)):
                if data is not None:
                    cached = answers[i] = detect_pb2.DetectResponse.FromString(data)
                    cached.variant = model.variant
        missing = [i for i, answer in enumerate(answers) if answer is None]
        if missing:
            async with self._admitted(budget):
                with self._experiments.outcome(model.name, model.variant) as failed_rows:
                    outcomes = await self._batcher.submit_batch(
                        model, [images[i][0] for i in missing], budget.deadline,
                        budget.request_id)
                    failed_rows += [o.code for o in outcomes if isinstance(o, ProxyError)]
            for i, outcome in zip(missing, outcomes, strict=True):
                if isinstance(outcome, ProxyError):
                    answers[i] = outcome
                    continue
                answer = answers[i] = build_response(*outcome, model, images[i][1])
                if lookups:
                    self._cache.store(lookups[i].key, answer.SerializeToString())
        for (image, info), whole in zip(images, answers, strict=True):
            if isinstance(whole, detect_pb2.DetectResponse):
                self._shadow.offer(model, image, info, whole)
        return [answer for answer in answers if answer is not None]

    async def _lookup(self, model: DetectorModel, image: Image, skip_cache: bool) -> Lookup:
        resolved = await self._catalogue.resolved(model.name)
        version = model.version or resolved.version
        return Lookup(cache_key(image, model.name, version, resolved.epoch),
                      model.name, version, skip_cache)

    def _count_images(self, method: str, model: str,
                      results: list[detect_pb2.DetectResult]) -> None:
        label = model if self._catalogue.known(model) else "(unknown)"
        for result in results:
            code = grpc.StatusCode.OK.name
            if result.HasField("error"):
                code = code_name(result.error.code)
            answer = result.response  # empty when the image failed
            self._telemetry.images.add(1, {"method": method, "model": label, "code": code,
                                           "version": answer.model_version,
                                           "variant": answer.variant})

    @contextlib.asynccontextmanager
    async def _admitted(self, budget: Budget) -> AsyncIterator[None]:
        """An upstream slot, or RESOURCE_EXHAUSTED at once when the wait for one would not
        fit the call's deadline."""
        try:
            async with self._admission.slot(budget.remaining()):
                yield
        except AtCapacity as exc:
            self._telemetry.rejected.add(1, {"reason": "at_capacity"})
            raise ProxyError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"the service is at capacity: the expected wait "
                             f"({exc.expected_wait_s:.1f}s) is longer than this call can wait "
                             f"({exc.affordable_s:.1f}s); retry with backoff") from None

    async def _send(self, model: DetectorModel, image: Image,
                    budget: Budget) -> tuple[InferResult, int]:
        """This image's row of a ModelInfer answer (aggregated with others when enabled)."""
        try:
            return await self._batcher.submit(model, image, budget.deadline, budget.request_id)
        except ProxyError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:  # the model (version) went away since
                if model.version:
                    raise await self._catalogue.version_not_found(model.name,
                                                                  model.version) from None
                raise await self._catalogue.not_found(model.name) from None
            raise

    def _budget(self, context: Context, cap_s: float | None = None) -> Budget:
        """The time the call's deadline leaves (the default upstream timeout without one; at
        most ``cap_s``: each image of a stream gets no more than a call would)."""
        remaining = context.time_remaining()
        if remaining is None:
            remaining = self._default_timeout_s
        if cap_s is not None:
            remaining = min(remaining, cap_s)
        if remaining <= 0:
            raise ProxyError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the call")
        return Budget(asyncio.get_running_loop().time() + remaining, _request_id(context))


async def _serialized(answer: Awaitable[detect_pb2.DetectResponse]) -> bytes:
    return (await answer).SerializeToString()


def method_handlers(service: DetectorService, observer: CallObserver) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(contract.SERVICE, {
        contract.DETECT: grpc.unary_unary_rpc_method_handler(
            observer.observe(contract.DETECT, service.Detect),
            request_deserializer=parse_request,
            response_serializer=detect_pb2.DetectResponse.SerializeToString),
        contract.DETECT_BATCH: grpc.unary_unary_rpc_method_handler(
            observer.observe(contract.DETECT_BATCH, service.DetectBatch),
            request_deserializer=parse_batch,
            response_serializer=detect_pb2.DetectBatchResponse.SerializeToString),
        contract.DETECT_STREAM: grpc.stream_stream_rpc_method_handler(
            observer.observe_stream(contract.DETECT_STREAM, service.DetectStream),
            request_deserializer=parse_stream_request,
            response_serializer=detect_pb2.DetectStreamResponse.SerializeToString),
        contract.LIST_MODELS: grpc.unary_unary_rpc_method_handler(
            observer.observe(contract.LIST_MODELS, service.ListModels),
            request_deserializer=detect_pb2.ListModelsRequest.FromString,
            response_serializer=detect_pb2.ListModelsResponse.SerializeToString),
    })
