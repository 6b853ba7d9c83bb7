"""A small pool of persistent HTTP/2 connections to Triton, shared by every caller.

This is the fix the project exists for: clients are made once at start-up and every call is
multiplexed onto them, so connections (and Triton's dynamic batching) are never defeated by
a client per request. Each client gets its own connection: gRPC would otherwise share one
subchannel among channels with equal arguments. Calls go to the client with the fewest in
flight, so one slow connection does not hold back the rest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import grpc
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc._utils import get_error_grpc

from .config import ProxyConfig

# tritonclient's own default; passing channel_args replaces its defaults, so restate it.
MAX_MESSAGE_BYTES = 2**31 - 1


def channel_args(config: ProxyConfig, index: int) -> list[tuple[str, int | str]]:
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", config.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", config.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", int(config.keepalive_permit_without_calls)),
        ("grpc.http2.max_pings_without_data", config.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", min(100, config.max_reconnect_backoff_ms)),
        ("grpc.min_reconnect_backoff_ms", min(100, config.max_reconnect_backoff_ms)),
        ("grpc.max_reconnect_backoff_ms", config.max_reconnect_backoff_ms),
        # One connection per client, not one shared by all clients to the same address.
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.primary_user_agent", f"detect-proxy/{index}"),
    ]


class ModelInfer:
    """ModelInfer on one pooled connection, taking request bytes already serialized
    (``infer_request.RequestTemplate``) so the image is not copied again on the way out.
    Answers and errors look like tritonclient's: InferResult, InferenceServerException."""

    def __init__(self, client: triton_aio.InferenceServerClient) -> None:
        # tritonclient keeps its channel private; the call shares its connection.
        self._call = client._channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer", request_serializer=None,
            response_deserializer=pb.ModelInferResponse.FromString)

    async def __call__(self, request: bytes, timeout_s: float,
                       metadata: Sequence[tuple[str, str]] = ()) -> triton_aio.InferResult:
        try:
            response = await self._call(request, timeout=timeout_s, metadata=metadata or None)
        except grpc.RpcError as exc:
            raise get_error_grpc(exc) from None
        return triton_aio.InferResult(response)


class TritonPool:
    def __init__(self, config: ProxyConfig) -> None:
        self.url = config.triton_url
        self.clients = [
            triton_aio.InferenceServerClient(config.triton_url, channel_args=channel_args(config, i))
            for i in range(config.pool_size)
        ]
        self._model_infer = [ModelInfer(c) for c in self.clients]
        self._in_flight = [0] * len(self.clients)
        self._next = 0

    def __len__(self) -> int:
        return len(self.clients)

    @contextlib.contextmanager
    def _least_busy(self) -> Iterator[int]:
        """The least busy connection; ties go round-robin so idle connections stay warm."""
        n = len(self.clients)
        start = self._next
        self._next = (start + 1) % n
        best = min(range(start, start + n), key=lambda i: self._in_flight[i % n]) % n
        self._in_flight[best] += 1
        try:
            yield best
        finally:
            self._in_flight[best] -= 1

    @contextlib.contextmanager
    def lease(self) -> Iterator[triton_aio.InferenceServerClient]:
        """A tritonclient client for control calls (config, metadata, readiness)."""
        with self._least_busy() as index:
            yield self.clients[index]

    @contextlib.contextmanager
    def lease_infer(self) -> Iterator[ModelInfer]:
        """ModelInfer on the least busy connection, for the hot path."""
        with self._least_busy() as index:
            yield self._model_infer[index]

    def in_flight(self) -> list[int]:
        return list(self._in_flight)

    def states(self) -> list[grpc.ChannelConnectivity]:
        # tritonclient keeps its channel private; its state is worth exporting anyway.
        return [c._channel.get_state(try_to_connect=False) for c in self.clients]

    def connect(self) -> None:
        """Start connecting every channel now rather than on the first call."""
        for client in self.clients:
            client._channel.get_state(try_to_connect=True)

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
