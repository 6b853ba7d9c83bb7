"""Every call the proxy makes to Triton, over the pooled channels it owns.

ModelInfer goes through the circuit breaker and is retried only where that is safe (no
answer: UNAVAILABLE), with jittered backoff, within the caller's deadline and the retry
budget; each attempt is a traced CLIENT span and a timed upstream call. Control calls
(model config and metadata, repository index, readiness) share the channels. Whatever the
model server answers, the caller sees one error type: ``ProxyError`` with a gRPC code.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc
from opentelemetry import trace
from tritonclient.grpc import InferResult, service_pb2_grpc
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

from . import contract
from .breaker import CircuitBreaker
from .channels import ChannelPool
from .config import ProxyConfig
from .errors import ProxyError, from_upstream
from .models import DetectorModel, Image
from .retry import RetryBudget, backoff_s
from .telemetry import Telemetry

log = logging.getLogger(__name__)

# Control calls are small and answered from memory; a slow one means a sick server.
CONTROL_TIMEOUT_S = 5.0
# Control calls only read what the server knows, so asking again is safe: a replica that hung
# or went away while answering one (a model's config, fetched by the first call of a model)
# must not fail the caller's Detect, and behind Envoy the second try goes elsewhere.
CONTROL_ATTEMPTS = 2
CONTROL_RETRIED = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)


class Upstream:
    def __init__(self, config: ProxyConfig, telemetry: Telemetry,
                 channels: ChannelPool | None = None, group: str = "") -> None:
        """``group``: the Triton group these channels reach through Envoy's egress, named
        in every call's ``x-detect-group`` header (empty: no header)."""
        self.channels = channels if channels is not None else ChannelPool(config)
        self._route = ((contract.GROUP_HEADER, group),) if group else ()
        self.breaker = CircuitBreaker(config.breaker_failure_threshold,
                                      config.breaker_open_ms / 1000)
        self.budget = RetryBudget(config.retry_budget_ratio)
        self._config = config
        self._telemetry = telemetry

    async def infer(self, model: DetectorModel, images: list[Image], timeout_s: float,
                    request_ids: list[str]) -> InferResult:
        """One ModelInfer for ``images`` (one row each), with breaker and retries."""
        # A single call's id travels as Triton's request id; a batch's ids as a list.
        request_id = ",".join(i for i in request_ids if i)
        request = model.request.build(images, request_id)
        model_name = model.name
        deadline = time.monotonic() + timeout_s
        self.budget.record_call()
        # "" when the call leaves the version to Triton's version policy.
        labels = {"model": model_name, "version": model.version, "variant": model.variant}
        self._telemetry.upstream_batch.record(len(images), labels)
        attempt = 0
        while True:
            if not self.breaker.allow():
                self._telemetry.rejected.add(1, {"reason": "circuit_open"})
                raise ProxyError(grpc.StatusCode.UNAVAILABLE,
                                 "the model server is unavailable (circuit breaker open; next "
                                 f"probe in {self.breaker.retry_in():.1f}s); retry with backoff")
            try:
                response = await self._model_infer(labels, request,
                                                   deadline - time.monotonic(), request_id)
                self.breaker.success()
                return InferResult(response)
            except grpc.aio.AioRpcError as exc:
                code, details = exc.code(), exc.details() or ""
                if code == grpc.StatusCode.UNAVAILABLE:
                    self.breaker.failure()
                else:
                    self.breaker.release()
                delay = backoff_s(attempt, self._config.retry_backoff_base_ms / 1000,
                                  self._config.retry_backoff_max_ms / 1000)
                if (code != grpc.StatusCode.UNAVAILABLE
                        or attempt >= self._config.retry_max_attempts
                        or deadline - time.monotonic() <= delay
                        or not self.budget.try_spend()):
                    raise from_upstream(code, details, model_name) from None
            attempt += 1
            self._telemetry.retries.add(1, labels)
            log.debug("retrying %s after UNAVAILABLE (attempt %d) in %.0f ms", model_name,
                      attempt, delay * 1000)
            await asyncio.sleep(delay)

    async def _model_infer(self, labels: dict[str, str], request: bytes, timeout_s: float,
                           request_id: str) -> pb.ModelInferResponse:
        """One attempt, traced and timed (``labels``: model, version, variant)."""
        start = time.perf_counter()
        outcome = "OK"
        with self._telemetry.tracer.start_as_current_span(
                "inference.GRPCInferenceService/ModelInfer", kind=trace.SpanKind.CLIENT,
                attributes={"rpc.system": "grpc", "rpc.service": "inference.GRPCInferenceService",
                            "rpc.method": "ModelInfer", "detect.model": labels["model"],
                            "detect.model_version": labels["version"]}) as span:
            # The request id travels both as Triton's request id and as the header Envoy's
            # egress logs; the trace context as traceparent metadata.
            headers = self._telemetry.inject({"x-request-id": request_id} if request_id else {})
            metadata = tuple(headers.items()) + self._route
            try:
                with self.channels.lease() as connection:
                    response: pb.ModelInferResponse = await connection.model_infer(
                        request, timeout=timeout_s, metadata=metadata or None)
                    return response
            except grpc.aio.AioRpcError as exc:
                outcome = exc.code().name
                span.set_status(trace.Status(trace.StatusCode.ERROR, outcome))
                raise
            finally:
                self._telemetry.upstream_duration.record(
                    (time.perf_counter() - start) * 1000,
                    {**labels, "status": outcome})

    async def model_config(self, name: str) -> mc.ModelConfig:
        request = pb.ModelConfigRequest(name=name)
        response = await self._control("ModelConfig", request, name)
        config: mc.ModelConfig = response.config
        return config

    async def model_metadata(self, name: str) -> pb.ModelMetadataResponse:
        response: pb.ModelMetadataResponse = await self._control(
            "ModelMetadata", pb.ModelMetadataRequest(name=name), name)
        return response

    async def repository_index(self) -> pb.RepositoryIndexResponse:
        response: pb.RepositoryIndexResponse = await self._control(
            "RepositoryIndex", pb.RepositoryIndexRequest(), "")
        return response

    async def _control(self, method: str, request: Any, model: str) -> Any:
        for attempt in range(CONTROL_ATTEMPTS):
            with self.channels.lease() as connection:
                try:
                    return await getattr(connection.stub, method)(
                        request, timeout=CONTROL_TIMEOUT_S, metadata=self._route or None)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() in CONTROL_RETRIED and attempt + 1 < CONTROL_ATTEMPTS:
                        log.info("%s %s: %s; asking again", method, model, exc.code().name)
                        continue
                    raise from_upstream(exc.code(), exc.details() or "", model) from None
        raise AssertionError("unreachable")

    async def ready(self, model: str, timeout_s: float) -> tuple[bool, str]:
        """Whether Triton and ``model`` (empty: Triton only) are ready, asked on every
        connection, the way calls go: ready when any gets a ready answer, since behind
        Envoy's egress a single check can land on one hung replica that Envoy is about to
        route around."""
        answers = await asyncio.gather(*(self._ready_on(c.stub, model, timeout_s)
                                         for c in self.channels.connections))
        return next((a for a in answers if a[0]), answers[0])

    async def _ready_on(self, stub: service_pb2_grpc.GRPCInferenceServiceStub, model: str,
                        timeout_s: float) -> tuple[bool, str]:
        metadata = self._route or None
        try:
            server = await stub.ServerReady(pb.ServerReadyRequest(), timeout=timeout_s,
                                            metadata=metadata)
            if not server.ready:
                return False, "Triton reports not ready"
            if model:
                answer = await stub.ModelReady(pb.ModelReadyRequest(name=model),
                                               timeout=timeout_s, metadata=metadata)
                if not answer.ready:
                    return False, f"model '{model}' is not ready"
        except grpc.aio.AioRpcError as exc:
            return False, f"Triton unreachable ({exc.code()})"
        return True, f"Triton{' and the default model' if model else ''} ready"

    def connect(self) -> None:
        self.channels.connect()

    async def close(self) -> None:
        await self.channels.close()

    @property
    def url(self) -> str:
        return self.channels.url

    def __len__(self) -> int:
        return len(self.channels)

