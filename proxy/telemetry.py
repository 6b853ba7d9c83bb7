"""Proxy metrics and traces through OpenTelemetry.

Metrics are exported for Prometheus scraping. Names follow OpenTelemetry's RPC semantic
conventions where they exist (``rpc.server.duration`` in milliseconds with ``rpc.system``,
``rpc.service``, ``rpc.method`` and the numeric ``rpc.grpc.status_code``; ``status`` carries
the code's name for humans), so dashboards built on them carry over.

Traces: a SERVER span per Detect, continuing the caller's W3C ``traceparent``, with the
Triton call as a CLIENT child whose context is passed on to the backend as metadata. The
caller's trace context is forwarded even when no exporter records spans.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

import grpc
from opentelemetry import metrics, propagate
from opentelemetry.context import Context
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)

from . import contract

log = logging.getLogger(__name__)

CACHE_MS_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 50, 100)
MS_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000, 10000)
BYTES_BUCKETS = (1 << 10, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 21, 1 << 22, 1 << 23)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
SHARE_BUCKETS = (0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
COUNT_BUCKETS = (0, 1, 2, 3, 5, 10, 20, 50)
SCORE_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)

TRACE_EXPORTERS = ("none", "console")


class Telemetry:
    def __init__(self, metrics_port: int, trace_exporter: str = "none",
                 span_exporter: SpanExporter | None = None) -> None:
        resource = Resource.create({"service.name": "detect-proxy"})
        readers: list[PrometheusMetricReader] = []
        if metrics_port:
            from prometheus_client import start_http_server

            start_http_server(metrics_port, addr="127.0.0.1")
            readers.append(PrometheusMetricReader())
            log.info("metrics on http://127.0.0.1:%d/metrics", metrics_port)
        self.provider = MeterProvider(
            metric_readers=readers, resource=resource,
            views=[
                View(instrument_name="rpc.server.duration",
                     aggregation=ExplicitBucketHistogramAggregation(MS_BUCKETS)),
                View(instrument_name="detect.upstream.duration",
                     aggregation=ExplicitBucketHistogramAggregation(MS_BUCKETS)),
                View(instrument_name="detect.image.size",
                     aggregation=ExplicitBucketHistogramAggregation(BYTES_BUCKETS)),
                View(instrument_name="detect.upstream.batch_size",
                     aggregation=ExplicitBucketHistogramAggregation(BATCH_BUCKETS)),
                View(instrument_name="detect.cache.lookup_duration",
                     aggregation=ExplicitBucketHistogramAggregation(CACHE_MS_BUCKETS)),
                View(instrument_name="detect.shadow.matched",
                     aggregation=ExplicitBucketHistogramAggregation(SHARE_BUCKETS)),
                View(instrument_name="detect.shadow.count_difference",
                     aggregation=ExplicitBucketHistogramAggregation(COUNT_BUCKETS)),
                View(instrument_name="detect.shadow.score_drift",
                     aggregation=ExplicitBucketHistogramAggregation(SCORE_BUCKETS)),
            ])
        meter = self.provider.get_meter("detect-proxy")
        self.duration = meter.create_histogram(
            "rpc.server.duration", unit="ms", description="Detect calls, arrival to response")
        self.upstream_duration = meter.create_histogram(
            "detect.upstream.duration", unit="ms", description="ModelInfer calls to Triton")
        self.upstream_batch = meter.create_histogram(
            "detect.upstream.batch_size", description="images per ModelInfer call")
        self.image_size = meter.create_histogram(
            "detect.image.size", unit="By", description="encoded image sizes received")
        self.in_flight = meter.create_up_down_counter(
            "detect.in_flight", description="Detect calls being handled")
        self.rejected = meter.create_counter(
            "detect.rejected", description="calls refused before reaching Triton, by reason")
        self.retries = meter.create_counter(
            "detect.upstream.retries", description="Triton calls retried after UNAVAILABLE")
        self.cache_lookups = meter.create_counter(
            "detect.cache.lookups", description="images looked up in the result cache, by "
            "result: hit (and tier), miss, coalesced (waited for an identical call in flight) "
            "or bypassed (skip_cache); the four add up to the images looked up")
        self.cache_lookup = meter.create_histogram(
            "detect.cache.lookup_duration", unit="ms",
            description="lookups in the shared cache tier, hit or miss")
        self.cache_errors = meter.create_counter(
            "detect.cache.errors", description="failed or timed-out shared cache commands "
            "(each a miss or a dropped store: the cache fails open)")
        self.images = meter.create_counter(
            "detect.images", description="images answered by DetectBatch and DetectStream, by "
            "method and status code")
        self.group_calls = meter.create_counter(
            "detect.group.calls", description="Triton calls routed to each group, by model and "
            "status code (a call re-routed after its group lost the model counts twice)")
        self.shadow_calls = meter.create_counter(
            "detect.shadow.calls", description="calls also sent to an experiment's candidate "
            "version, by outcome: its status code, or skipped (at capacity, or at the shadow's "
            "concurrency limit)")
        self.guard_messages = meter.create_counter(
            "detect.experiment.guard_messages", description="guard decisions shared with the "
            "other proxies through Redis, by outcome: sent, dropped (Redis unreachable), "
            "applied (another proxy's decision changed the split here); by action: out, back")
        self.shadow_matched = meter.create_histogram(
            "detect.shadow.matched", description="share of the primary answer's detections the "
            "shadow candidate also found (same class, IoU >= 0.5), per compared call")
        self.shadow_count_difference = meter.create_histogram(
            "detect.shadow.count_difference", description="difference in the number of "
            "detections between the primary and the shadow answer, per compared call")
        self.shadow_score_drift = meter.create_histogram(
            "detect.shadow.score_drift", description="mean score difference of the matched "
            "detections of the primary and the shadow answer, per compared call")
        self._meter = meter

        self.tracer_provider = TracerProvider(resource=resource)
        if span_exporter is not None:
            self.tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
        elif trace_exporter == "console":
            self.tracer_provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif trace_exporter != "none":
            raise ValueError(f"unknown trace exporter {trace_exporter!r}; "
                             f"use one of {TRACE_EXPORTERS}")
        self.tracer = self.tracer_provider.get_tracer("detect-proxy")

    def observe(self, name: str, description: str,
                read: Callable[[], Iterable[tuple[float, dict[str, str]]]]) -> None:
        """A gauge sampled at scrape time (pool channel states, health)."""
        def callback(_options: metrics.CallbackOptions) -> list[metrics.Observation]:
            return [metrics.Observation(value, attributes) for value, attributes in read()]
        self._meter.create_observable_gauge(name, callbacks=[callback], description=description)

    def record_call(self, method: str, model: str, version: str, variant: str,
                    code: grpc.StatusCode, duration_ms: float) -> None:
        self.duration.record(duration_ms, {
            "rpc.system": "grpc", "rpc.service": contract.SERVICE, "rpc.method": method,
            "rpc.grpc.status_code": code.value[0], "status": code.name, "model": model,
            "version": version, "variant": variant})

    @staticmethod
    def extract(metadata: Mapping[str, str | bytes]) -> Context:
        return propagate.extract(metadata)

    @staticmethod
    def inject(headers: dict[str, str]) -> dict[str, str]:
        propagate.inject(headers)
        return headers

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.provider.shutdown()
