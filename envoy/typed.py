"""How Envoy's configuration spells protobuf values: typed configs, addresses, durations.

Every extension's ``typed_config`` names its message with a type URL. The URLs are spelled
here and nowhere else, so the builders name a message by its short name (``"Router"``), and
a misspelt one fails at render time (KeyError) instead of inside ``envoy --mode validate``.
"""

from __future__ import annotations

from typing import Any, Final

# Every message this project configures lives under envoy.extensions.
TYPE_URL_PREFIX: Final = "type.googleapis.com/envoy.extensions."

MESSAGES: Final[dict[str, str]] = {
    # Listeners
    "HttpConnectionManager": "filters.network.http_connection_manager.v3.HttpConnectionManager",
    "DownstreamTlsContext": "transport_sockets.tls.v3.DownstreamTlsContext",
    "Secret": "transport_sockets.tls.v3.Secret",
    "FileAccessLog": "access_loggers.file.v3.FileAccessLog",
    # HTTP filters, in the order the front listener runs them
    "HeaderMutation": "filters.http.header_mutation.v3.HeaderMutation",
    "RBAC": "filters.http.rbac.v3.RBAC",
    "HealthCheck": "filters.http.health_check.v3.HealthCheck",
    "LocalRateLimit": "filters.http.local_ratelimit.v3.LocalRateLimit",
    "Buffer": "filters.http.buffer.v3.Buffer",
    "BufferPerRoute": "filters.http.buffer.v3.BufferPerRoute",
    "GrpcStats": "filters.http.grpc_stats.v3.FilterConfig",
    "Router": "filters.http.router.v3.Router",
    # Routes and clusters
    "PreviousHostsPredicate": "retry.host.previous_hosts.v3.PreviousHostsPredicate",
    "HttpProtocolOptions": "upstreams.http.v3.HttpProtocolOptions",
    "DnsCluster": "clusters.dns.v3.DnsCluster",
    "UpstreamTlsContext": "transport_sockets.tls.v3.UpstreamTlsContext",
    # Bootstrap
    "DownstreamConnectionsConfig":
        "resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
}


def typed(message: str, **fields: Any) -> dict[str, Any]:
    """A ``typed_config`` (protobuf Any): the message's type URL, then its fields."""
    return {"@type": TYPE_URL_PREFIX + MESSAGES[message], **fields}


def extension(name: str, message: str, **fields: Any) -> dict[str, Any]:
    """An extension as Envoy lists filters, loggers and transport sockets: name, typed_config."""
    return {"name": name, "typed_config": typed(message, **fields)}


def address(host_port: str) -> dict[str, Any]:
    """``host:port`` (``[v6]:port`` too) as a SocketAddress."""
    host, port = host_port.rsplit(":", 1)
    return {"socket_address": {"address": host.strip("[]"), "port_value": int(port)}}


def duration(seconds: float) -> str:
    """Seconds as a protobuf Duration in its JSON form (``"1.5s"``)."""
    return f"{seconds:g}s"
