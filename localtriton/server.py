"""Wiring: model repository, Triton's inference service, health, reflection, shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tritonclient.grpc import service_pb2, service_pb2_grpc

from . import metrics
from .options import Options
from .repository import ModelRepository
from .service import InferenceService

log = logging.getLogger("localtriton")

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


class LocalTriton:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.repository = ModelRepository(options.model_repository)
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server(options=options.grpc_server_options())
        self.port = 0
        self.metrics = None

    async def start(self) -> None:
        await self.repository.load()
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceService(self.repository), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server)
        address = f"{self.options.grpc_address}:{self.options.grpc_port}"
        self.port = self.server.add_insecure_port(address)
        if not self.port:
            raise OSError(f"cannot listen on {address}")
        await self.server.start()
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if self.options.metrics_port:
            self.metrics = metrics.serve(self.repository, self.options.grpc_address,
                                         self.options.metrics_port)
        log.info("Started GRPCInferenceService at %s:%d serving %s",
                 self.options.grpc_address, self.port, ", ".join(self.repository.names()))

    async def stop(self) -> None:
        """Report NOT_SERVING first so balancers move away, then drain and unload."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.options.exit_timeout_secs)
        await self.repository.close()
        if self.metrics:
            self.metrics.shutdown()
        log.info("stopped")


async def run(options: Options) -> None:
    server = LocalTriton(options)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("signal received; draining for up to %.0fs", options.exit_timeout_secs)
    await server.stop()
