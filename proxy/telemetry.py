"""Proxy metrics through OpenTelemetry, exported for Prometheus scraping.

Names follow OpenTelemetry's RPC semantic conventions where they exist
(``rpc.server.duration`` in milliseconds with ``rpc.system``, ``rpc.service``,
``rpc.method`` and ``rpc.grpc.status_code``), so dashboards built on them carry over.
"""

from __future__ import annotations

import logging

from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

log = logging.getLogger("proxy.telemetry")

MS_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000, 10000)
BYTES_BUCKETS = (1 << 10, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 21, 1 << 22, 1 << 23)

SERVICE = "detect.v1.Detector"


class Telemetry:
    def __init__(self, metrics_port: int) -> None:
        readers = []
        if metrics_port:
            from prometheus_client import start_http_server

            start_http_server(metrics_port, addr="127.0.0.1")
            readers.append(PrometheusMetricReader())
            log.info("metrics on http://127.0.0.1:%d/metrics", metrics_port)
        self.provider = MeterProvider(
            metric_readers=readers,
            resource=Resource.create({"service.name": "detect-proxy"}),
            views=[
                View(instrument_name="rpc.server.duration",
                     aggregation=ExplicitBucketHistogramAggregation(MS_BUCKETS)),
                View(instrument_name="detect.upstream.duration",
                     aggregation=ExplicitBucketHistogramAggregation(MS_BUCKETS)),
                View(instrument_name="detect.image.size",
                     aggregation=ExplicitBucketHistogramAggregation(BYTES_BUCKETS)),
            ])
        meter = self.provider.get_meter("detect-proxy")
        self.duration = meter.create_histogram(
            "rpc.server.duration", unit="ms", description="Detect calls, arrival to response")
        self.upstream_duration = meter.create_histogram(
            "detect.upstream.duration", unit="ms", description="ModelInfer calls to Triton")
        self.image_size = meter.create_histogram(
            "detect.image.size", unit="By", description="encoded image sizes received")
        self.in_flight = meter.create_up_down_counter(
            "detect.in_flight", description="Detect calls being handled")
        self.rejected = meter.create_counter(
            "detect.rejected", description="calls refused before reaching Triton, by reason")

    def record_call(self, model: str, code: str, duration_ms: float) -> None:
        self.duration.record(duration_ms, {
            "rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": "Detect",
            "rpc.grpc.status_code": code, "model": model})

    def shutdown(self) -> None:
        self.provider.shutdown()
