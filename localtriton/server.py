"""Wiring: model repository, Triton's inference service, health, shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from http.server import ThreadingHTTPServer

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2_grpc

from . import metrics
from .options import Options
from .repository import ModelRepository
from .service import InferenceService

log = logging.getLogger(__name__)


def server_credentials(options: Options) -> grpc.ServerCredentials | None:
    """TLS for the gRPC port as tritonserver sets it up from the same flags (None: plaintext):
    the server certificate and key, and with ``--grpc-use-ssl-mutual`` a client certificate
    signed by ``--grpc-root-cert`` required of every caller."""
    if not options.tls:
        return None
    assert options.grpc_server_cert and options.grpc_server_key  # parse() checked
    pair = (options.grpc_server_key.read_bytes(), options.grpc_server_cert.read_bytes())
    if options.grpc_use_ssl_mutual:
        assert options.grpc_root_cert
        return grpc.ssl_server_credentials([pair], options.grpc_root_cert.read_bytes(),
                                           require_client_auth=True)
    return grpc.ssl_server_credentials([pair])


class TritonHealth(health_pb2_grpc.HealthServicer):
    """grpc.health.v1 as tritonserver serves it: ``Check`` answers for the whole server
    whatever service is named, SERVING while the server is ready (ServerReady; NOT_SERVING
    once shutdown begins); ``Watch`` is not implemented, and there is no server reflection."""

    def __init__(self, ready: Callable[[], bool] = lambda: True) -> None:
        self.serving = False
        self._ready = ready

    def is_ready(self) -> bool:
        return self.serving and self._ready()

    async def Check(self, request, context):
        return health_pb2.HealthCheckResponse(
            status=health_pb2.HealthCheckResponse.SERVING if self.is_ready()
            else health_pb2.HealthCheckResponse.NOT_SERVING)


class LocalTriton:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.repository = ModelRepository(options.model_repository)
        # tritonserver's --strict-readiness: not ready while a model that was loaded is not
        # READY (loading, unloading, failed); an unloaded one does not count.
        self.health = TritonHealth(self.repository.ready if options.strict_readiness
                                   else lambda: True)
        self.server = grpc.aio.server(options=options.grpc_server_options())
        self.port = 0
        self.metrics: ThreadingHTTPServer | None = None

    async def start(self) -> None:
        credentials = server_credentials(self.options)  # a missing file fails before loading
        await self.repository.load(self.options.startup_models())
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceService(self.repository, self.options.explicit, self.health.is_ready),
            self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        address = f"{self.options.grpc_address}:{self.options.grpc_port}"
        self.port = (self.server.add_secure_port(address, credentials) if credentials
                     else self.server.add_insecure_port(address))
        if not self.port:
            raise OSError(f"cannot listen on {address}")
        await self.server.start()
        self.health.serving = True
        if self.options.metrics_port:
            self.metrics = metrics.serve(self.repository, self.options.grpc_address,
                                         self.options.metrics_port)
        log.info("Started GRPCInferenceService at %s:%d%s serving %s%s",
                 self.options.grpc_address, self.port,
                 " (mutual TLS)" if self.options.grpc_use_ssl_mutual
                 else " (TLS)" if self.options.tls else "",
                 ", ".join(self.repository.names()) or "no model",
                 " (explicit model control)" if self.options.explicit else "")

    async def stop(self) -> None:
        """As tritonserver does: NOT_SERVING, refuse new requests (UNAVAILABLE, which callers
        may retry on another replica), let those already accepted by a model finish, unload."""
        self.health.serving = False
        self.repository.stop_accepting()
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
