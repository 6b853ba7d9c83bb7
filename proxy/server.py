"""Wiring: upstream, catalogue, Detect service, health, reflection, metrics, shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from opentelemetry.sdk.trace.export import SpanExporter
from tritonclient.grpc import InferResult

from detect.v1 import detect_pb2

from . import contract, reflection
from .admission import Admission
from .batcher import MicroBatcher
from .cache import LocalTier, ResultCache
from .catalogue import Catalogue
from .config import ProxyConfig
from .detector import DetectorService, StreamLimits, method_handlers
from .experiments import Experiments
from .guard_sync import GuardSync
from .health import ReadinessWatcher
from .models import DetectorModel, Image
from .observed import CallObserver
from .operations import OperationsService
from .operations import method_handlers as operations_handlers
from .redis_tier import RedisTier
from .router import Router
from .shadow import ShadowTraffic
from .telemetry import Telemetry

log = logging.getLogger(__name__)

# gRPC itself would refuse a message over its receive limit with RESOURCE_EXHAUSTED ("retry
# later"), which a client may retry forever. The proxy takes a message of any size and
# refuses an image over --max-image-bytes with INVALID_ARGUMENT naming the limit. Memory
# stays bounded where callers come from: Envoy's request limit in front of the proxy, which
# listens on loopback or a Unix socket only.
UNLIMITED = -1


class DetectProxy:
    def __init__(self, config: ProxyConfig, span_exporter: SpanExporter | None = None) -> None:
        self.config = config
        self.telemetry = Telemetry(config.metrics_port, config.trace_exporter, span_exporter)
        self.router = Router(config, self.telemetry)
        self.catalogue = Catalogue(self.router, config.exposed, config.cache_epoch)
        self.admission = Admission(config.max_upstream_calls, config.max_queue_wait_ms / 1000)
        local = LocalTier(config.cache_max_bytes) if config.cache_max_bytes else None
        shared = None
        if config.redis_url:
            shared = RedisTier(config.redis_url, config.redis_timeout_ms / 1000,
                               config.redis_retry_ms / 1000, self.telemetry)
        self.cache = ResultCache(config.cache_ttl_s, local, shared, self.telemetry)
        self.experiments = Experiments(config.experiments, config.experiments_refresh_ms / 1000)
        self.guard_sync: GuardSync | None = None
        if config.redis_url and config.experiments:
            self.guard_sync = GuardSync(config.redis_url, self.experiments,
                                        config.redis_timeout_ms / 1000,
                                        config.redis_retry_ms / 1000, self.telemetry)
        batcher = MicroBatcher(self.router, config.batch_max_wait_us / 1e6, config.batch_max_size)

        def shadow_send(model: DetectorModel, image: Image,
                        timeout_s: float) -> Awaitable[tuple[InferResult, int]]:
            deadline = asyncio.get_running_loop().time() + timeout_s
            return batcher.submit(model, image, deadline, "")

        self.shadow = ShadowTraffic(self.experiments, shadow_send,
                                    lambda: self.admission.active >= self.admission.limit,
                                    config.upstream_timeout_ms / 1000, self.telemetry)
        self.service = DetectorService(
            self.catalogue, self.admission, batcher,
            self.cache, config.image_limits, config.default_model,
            config.upstream_timeout_ms / 1000, config.max_batch_images,
            StreamLimits(config.stream_window, config.stream_max_images,
                         config.stream_max_duration_s),
            self.experiments, self.shadow, self.telemetry)
        self._refresher: asyncio.Task[None] | None = None
        self.observer = CallObserver(self.telemetry, config.max_in_flight, self._describe,
                                     self.catalogue.known)
        self.health = health.aio.HealthServicer()
        self.watcher = ReadinessWatcher(self.router, self.health, config.default_model,
                                        config.health_interval_ms / 1000,
                                        config.health_failure_threshold)
        self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", UNLIMITED),
            ("grpc.so_reuseport", 0),
        ])
        self.address = ""
        self.operations = OperationsService(self.router, self.experiments)
        groups = self.router.groups
        self.telemetry.observe(
            "detect.pool.channel_state", "connectivity of each pooled Triton connection "
            "(1 for its current state)",
            lambda: [(1, {"group": g.name, "channel": str(i), "state": state.name})
                     for g in groups for i, state in enumerate(g.upstream.channels.states())])
        self.telemetry.observe(
            "detect.breaker.state", "circuit breaker per Triton group: 0 closed, 1 half-open, "
            "2 open",
            lambda: [(int(g.upstream.breaker.state), {"group": g.name,
                                                    "upstream": g.upstream.url})
                     for g in groups])
        if not self.router.single:
            self.telemetry.observe(
                "detect.group.replicas", "replicas of each Triton group, by whether they answer",
                lambda: [(sum(r.reachable == up for r in g.replicas.values()),
                          {"group": g.name, "state": "up" if up else "down"})
                         for g in groups for up in (True, False)])
            self.telemetry.observe(
                "detect.group.serves", "1 for each model a Triton group serves (the routing "
                "table)",
                lambda: [(1, {"group": g.name, "model": m}) for g in groups for m in g.served])
        self.telemetry.observe(
            "detect.experiment.weight", "each experiment variant's weight in force (0 while "
            "its guard holds it out of the split)",
            lambda: [(v.weight, {"model": e.model, "variant": v.name, "version": v.version})
                     for e in self.experiments.by_model.values()
                     for v in self.experiments.active(e)])
        self.telemetry.observe(
            "detect.experiment.guarded", "1 for each experiment variant its guard took out of "
            "the split (an operator puts it back)",
            lambda: [(1 if (e.model, v.name) in self.experiments.guarded else 0,
                      {"model": e.model, "variant": v.name, "version": v.version})
                     for e in self.experiments.by_model.values() for v in e.variants])
        self.telemetry.observe(
            "detect.experiment.shared_breach", "1 while every variant of a model's experiment "
            "breaks its guard at once: a fault they share (backend outage, overload), so none "
            "is taken out",
            lambda: [(1 if e.model in self.experiments.shared_breach else 0, {"model": e.model})
                     for e in self.experiments.by_model.values()])
        self.telemetry.observe(
            "detect.experiment.reloads", "re-reads of the experiments file that changed it, by "
            "outcome: applied, invalid (kept the experiments in force) or unreadable",
            lambda: [(n, {"outcome": outcome})
                     for outcome, n in self.experiments.reloads.items()])
        self.telemetry.observe(
            "detect.admission.queued", "calls waiting in the proxy for an upstream slot",
            lambda: [(self.admission.queued, {})])
        self.telemetry.observe(
            "detect.admission.throughput", "calls per second the backend completes for this "
            "proxy at capacity, as admission estimates it",
            lambda: [(round(self.admission.throughput(), 3), {})])
        self.telemetry.observe(
            "detect.health.serving", "1 while health reports SERVING",
            lambda: [(1 if self.watcher.serving else 0, {})])
        if local is not None:
            self.telemetry.observe(
                "detect.cache.local_bytes", "bytes of answers in the in-process cache tier",
                lambda: [(local.bytes, {})])
            self.telemetry.observe(
                "detect.cache.local_entries", "answers in the in-process cache tier",
                lambda: [(len(local), {})])

    def _describe(self, request: object) -> tuple[str, int]:
        """(model, image bytes) of a call, for its span, metrics and log line."""
        if request is None:  # a Detect body that did not parse
            return self.config.default_model, 0
        if isinstance(request, detect_pb2.DetectBatchRequest):
            return (request.model or self.config.default_model,
                    sum(len(image) for image in request.images))
        if not isinstance(request, tuple):  # ListModels, or a stream (models per image)
            return "", 0
        detect, image = request
        return self.service.model_name(detect), len(image)

    async def _refresh_models(self) -> None:
        """Keeps the cache keys' versions and epochs current."""
        while True:
            await asyncio.sleep(self.config.model_refresh_ms / 1000)
            await self.catalogue.refresh()

    async def start(self) -> None:
        self.server.add_generic_rpc_handlers((method_handlers(self.service, self.observer),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.server.add_generic_rpc_handlers((operations_handlers(self.operations,
                                                                  self.observer),))
        reflection.enable(self.server, [contract.SERVICE, contract.OPERATIONS_SERVICE,
                                        health.SERVICE_NAME])
        port = self.server.add_insecure_port(self.config.listen)
        if not port:
            raise OSError(f"cannot listen on {self.config.listen}")
        self.address = self.config.listen
        if not self.config.listen.startswith("unix:"):
            self.address = f"{self.config.listen.rsplit(':', 1)[0]}:{port}"
        await self.router.start()
        self.experiments.start()
        if self.guard_sync is not None:
            self.guard_sync.start()
        await self.watcher.update()  # report the true state from the first Check on
        self.watcher.start()
        if self.cache.enabled:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_models())
        await self.server.start()
        log.info("serving %s on %s; Triton at %s over %d connection(s)", contract.SERVICE,
                 self.address, self.router.url, len(self.router))

    async def stop(self) -> None:
        """NOT_SERVING first, keep serving until balancers have noticed, then stop
        accepting, let in-flight calls finish, and close the upstream channels."""
        await self.watcher.stop()
        await self.health.enter_graceful_shutdown()
        log.info("NOT_SERVING; draining for %.1fs before closing the listener",
                 self.config.drain_delay_s)
        await asyncio.sleep(self.config.drain_delay_s)
        await self.server.stop(self.config.shutdown_grace_s)
        if self._refresher is not None:
            self._refresher.cancel()
        await self.shadow.close()
        await self.experiments.close()
        if self.guard_sync is not None:
            await self.guard_sync.close()
        await self.cache.close()
        await self.router.close()
        self.telemetry.shutdown()
        log.info("stopped")


async def run(config: ProxyConfig) -> None:
    proxy = DetectProxy(config)
    await proxy.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Drain without exiting (health NOT_SERVING, calls still served) and resume.
    loop.add_signal_handler(signal.SIGUSR1, proxy.watcher.set_drained, True)
    loop.add_signal_handler(signal.SIGUSR2, proxy.watcher.set_drained, False)
    await stop.wait()
    log.info("signal received; shutting down gracefully")
    await proxy.stop()
