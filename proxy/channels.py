"""A small pool of persistent HTTP/2 connections to Triton, shared by every caller.

This is the fix the project exists for: channels are made once at start-up and every call
is multiplexed onto them, so connections (and Triton's dynamic batching) are never defeated
by a client per request. Each channel gets its own connection: gRPC would otherwise share
one subchannel among channels with equal arguments. Calls go to the channel with the fewest
in flight, so one slow connection does not hold back the rest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from .config import ProxyConfig

# Triton's messages carry whole images and tensors: no gRPC size limit on this hop.
UNLIMITED = -1
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def channel_args(config: ProxyConfig, index: int,
                 round_robin: bool = False) -> list[tuple[str, int | str]]:
    """``round_robin``: the target names several replicas (a group reached directly), and
    each channel spreads its calls over all of them instead of sticking to the first."""
    balancing: list[tuple[str, int | str]] = (
        [("grpc.lb_policy_name", "round_robin")] if round_robin else [])
    return balancing + [
        ("grpc.max_send_message_length", UNLIMITED),
        ("grpc.max_receive_message_length", UNLIMITED),
        ("grpc.keepalive_time_ms", config.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", config.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", int(config.keepalive_permit_without_calls)),
        ("grpc.http2.max_pings_without_data", config.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", min(100, config.max_reconnect_backoff_ms)),
        ("grpc.min_reconnect_backoff_ms", min(100, config.max_reconnect_backoff_ms)),
        ("grpc.max_reconnect_backoff_ms", config.max_reconnect_backoff_ms),
        # One connection per channel, not one shared by all channels to the same address.
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.primary_user_agent", f"detect-proxy/{index}"),
    ]


@dataclass(frozen=True)
class Connection:
    """One pooled channel: Triton's stub for control calls, and ModelInfer taking request
    bytes already serialized (``infer_request.RequestTemplate``), so that the image is not
    copied again on the way out."""

    channel: grpc.aio.Channel
    stub: service_pb2_grpc.GRPCInferenceServiceStub
    model_infer: grpc.aio.UnaryUnaryMultiCallable[bytes, pb.ModelInferResponse]


def replica_channel(config: ProxyConfig, target: str,
                    args: list[tuple[str, int | str]]) -> grpc.aio.Channel:
    """A channel straight to Triton replicas (not through Envoy's egress): TLS when
    ``--triton-tls-ca`` is set, as Envoy's egress speaks it to the same replicas."""
    if not config.triton_tls_ca:
        return grpc.aio.insecure_channel(target, options=args)
    credentials = grpc.ssl_channel_credentials(Path(config.triton_tls_ca).read_bytes())
    if config.triton_tls_server_name:
        args = [*args, ("grpc.ssl_target_name_override", config.triton_tls_server_name)]
    return grpc.aio.secure_channel(target, credentials, options=args)


def _connect(channel: grpc.aio.Channel) -> Connection:
    model_infer: grpc.aio.UnaryUnaryMultiCallable[bytes, pb.ModelInferResponse] = (
        channel.unary_unary(MODEL_INFER, request_serializer=None,
                            response_deserializer=pb.ModelInferResponse.FromString))
    return Connection(channel, service_pb2_grpc.GRPCInferenceServiceStub(channel), model_infer)


class ChannelPool:
    def __init__(self, config: ProxyConfig, target: str = "", round_robin: bool = False) -> None:
        """``target``: a group's replicas reached directly (``host:port``, ``ipv4:a:p,b:p``,
        ``dns:///name:p``); empty: ``--triton-url``, plaintext (Triton or Envoy's egress
        on loopback)."""
        self.url = target or config.triton_url

        def channel(i: int) -> grpc.aio.Channel:
            if target:
                return replica_channel(config, target, channel_args(config, i, round_robin))
            return grpc.aio.insecure_channel(self.url, options=channel_args(config, i))

        self.connections = [_connect(channel(i)) for i in range(config.pool_size)]
        self._in_flight = [0] * len(self.connections)
        self._next = 0

    def __len__(self) -> int:
        return len(self.connections)

    @contextlib.contextmanager
    def lease(self) -> Iterator[Connection]:
        """The least busy connection; ties go round-robin so idle connections stay warm."""
        n = len(self.connections)
        start = self._next
        self._next = (start + 1) % n
        best = min(range(start, start + n), key=lambda i: self._in_flight[i % n]) % n
        self._in_flight[best] += 1
        try:
            yield self.connections[best]
        finally:
            self._in_flight[best] -= 1

    def in_flight(self) -> list[int]:
        return list(self._in_flight)

    def states(self) -> list[grpc.ChannelConnectivity]:
        return [c.channel.get_state(try_to_connect=False) for c in self.connections]

    def connect(self) -> None:
        """Start connecting every channel now rather than on the first call."""
        for c in self.connections:
            c.channel.get_state(try_to_connect=True)

    async def close(self) -> None:
        for c in self.connections:
            await c.channel.close()
