"""Render Envoy's configuration from a few parameters, and validate it with Envoy itself.

One Envoy process has three parts:
- the front listener (TLS, optionally mTLS with an RBAC allowlist; local rate limits, a
  global bucket and one per client; request size limit; route timeout from grpc-timeout
  with a maximum; grpc_stats; JSON access log; x-request-id), routing to the proxy cluster;
- the Triton egress listener on loopback for the proxies (retries with a budget, per-try
  timeout, outlier detection, circuit breakers, active gRPC health checks, keepalive);
- the admin interface, on loopback only;
- optionally (``--ops-port``) a plaintext operations listener for a pod or a host: Envoy's
  ``/stats/prometheus``, the proxy's ``/metrics`` and the proxies' gRPC health ``Check``,
  and nothing else of the admin interface, for scrapers and probes that cannot reach
  loopback.

Replicas are listed as addresses (STATIC clusters) or, with ``--proxy-dns`` /
``--triton-dns``, as names resolved continually (STRICT_DNS: every address of the name is a
host), such as a Kubernetes headless Service or a Compose service.

The output is JSON, which Envoy reads as YAML.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from detect_envoy.certs import SDS_FILE, client_identity

HERE = Path(__file__).resolve().parent



@dataclass
class StackConfig:
    proxies: list[str]
    tritons: list[str]
    cert_dir: Path
    front_address: str = "127.0.0.1"
    front_port: int = 8443
    egress_port: int = 8001
    admin_port: int = 9901
    mtls: bool = False
    allowed_clients: list[str] = field(default_factory=lambda: ["alpha", "beta"])
    global_rps: int = 1000
    global_burst: int = 2000
    client_rps: int = 200
    client_burst: int = 400
    max_request_bytes: int = 9 * 1024 * 1024
    max_grpc_timeout_s: float = 30.0
    num_retries: int = 2
    triton_keepalive_interval_s: int = 5
    triton_keepalive_timeout_s: int = 3
    health_interval_ms: int = 1000
    access_log: str = "/dev/stdout"
    # STRICT_DNS discovery instead of fixed addresses (names re-resolved every dns_refresh_s).
    proxy_dns: bool = False
    triton_dns: bool = False
    dns_refresh_s: float = 5.0
    # Plaintext operations listener on front_address (0: none), and the proxy metrics
    # address it serves as /metrics (empty: not served).
    ops_port: int = 0
    proxy_metrics: str = ""
    # Front connections are closed gracefully (GOAWAY) after this long, so long-lived
    # client connections re-balance over replicas added since (0: never).
    max_connection_duration_s: float = 0.0


# A retry avoids the host that just failed by drawing again, up to this many times. With
# least-request balancing a dead host has no calls in flight, so it keeps winning the draw:
# a few attempts are not enough to get away from it before health checks notice.
HOST_SELECTION_ATTEMPTS = 20


def _address(host_port: str) -> dict:
    host, port = host_port.rsplit(":", 1)
    return {"socket_address": {"address": host.strip("[]"), "port_value": int(port)}}


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


def _http2_cluster_options(keepalive: dict | None = None) -> dict:
    http2: dict = {"max_concurrent_streams": 1024,
                   "initial_stream_window_size": 1 << 20,
                   "initial_connection_window_size": 16 << 20}
    if keepalive:
        http2["connection_keepalive"] = keepalive
    return {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": http2}}}


def _grpc_health_check(service: str, interval_ms: int) -> list[dict]:
    return [{
        # Generous against a busy host's scheduling hiccups; a NOT_SERVING answer still
        # takes the host out at the first check.
        "timeout": f"{2 * interval_ms / 1000:g}s",
        "interval": f"{interval_ms / 1000:g}s",
        "no_traffic_interval": f"{interval_ms / 1000:g}s",
        "unhealthy_threshold": 1,
        "healthy_threshold": 1,
        "grpc_health_check": {"service_name": service},
    }]


def _cluster(name: str, hosts: list[str], health_service: str, interval_ms: int,
             keepalive: dict | None = None, dns_refresh_s: float | None = None) -> dict:
    cluster = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "LEAST_REQUEST",
        "typed_extension_protocol_options": _http2_cluster_options(keepalive),
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": _address(h)}} for h in hosts]}]},
        "health_checks": _grpc_health_check(health_service, interval_ms),
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
    }
    if dns_refresh_s is not None:
        # Every address the name resolves to is a host, health-checked on its own; replicas
        # that come and go (pods behind a headless Service) are picked up at each refresh.
        # (STRICT_DNS, in the typed form that replaces the deprecated cluster fields.)
        del cluster["type"]
        cluster["cluster_type"] = {"name": "envoy.cluster.dns", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.clusters.dns.v3.DnsCluster",
            "dns_refresh_rate": _duration(dns_refresh_s),
            "dns_lookup_family": "V4_PREFERRED",
            "all_addresses_in_single_endpoint": False}}
    return cluster


def _access_log(path: str, name: str) -> list[dict]:
    return [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": path,
        "log_format": {"json_format": {
            "time": "%START_TIME%",
            "listener": name,
            "request_id": "%REQ(X-REQUEST-ID)%",
            "method": "%REQ(:PATH)%",
            "grpc_status": "%GRPC_STATUS%",
            "http_status": "%RESPONSE_CODE%",
            "flags": "%RESPONSE_FLAGS%",
            "duration_ms": "%DURATION%",
            "bytes_in": "%BYTES_RECEIVED%",
            "bytes_out": "%BYTES_SENT%",
            "client": "%REQ(X-CLIENT-ID)%",
            "peer": "%DOWNSTREAM_REMOTE_ADDRESS%",
            "upstream": "%UPSTREAM_HOST%",
            "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
        }}}}]


def _too_large_reply(limit: int) -> dict:
    """Envoy's own size limit answers as the proxy's does: INVALID_ARGUMENT naming the limit
    (for gRPC, Envoy would derive UNKNOWN from HTTP 413 and say "Payload Too Large")."""
    return {"mappers": [{
        "filter": {"status_code_filter": {"comparison": {
            "op": "EQ", "value": {"default_value": 413, "runtime_key": "detect.too_large_code"}}}},
        "headers_to_add": [{"header": {"key": "grpc-status", "value": "3"},
                            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
        # A gRPC local reply carries its body as grpc-message.
        "body": {"inline_string": f"request is larger than the limit of {limit} bytes; "
                                  "send a smaller image"},
    }]}


def _hcm(name: str, routes: list[dict], filters: list[dict], access_log: str,
         edge: bool) -> dict:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": name,
            "codec_type": "HTTP2" if not edge else "AUTO",
            "use_remote_address": edge,
            "generate_request_id": True,
            "preserve_external_request_id": True,
            "http2_protocol_options": {"max_concurrent_streams": 1024,
                                       "initial_stream_window_size": 1 << 20,
                                       "initial_connection_window_size": 16 << 20},
            "stream_idle_timeout": "300s",
            "access_log": _access_log(access_log, name),
            "route_config": {"name": name, "virtual_hosts": [
                {"name": name, "domains": ["*"], "routes": routes}]},
            "http_filters": filters + [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        },
    }


def _tls_context(config: StackConfig) -> dict:
    certs = config.cert_dir
    common: dict = {
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_2",
                       "tls_maximum_protocol_version": "TLSv1_3"},
        "alpn_protocols": ["h2"],
        # The server certificate comes from a watched SDS file: rotating it on disk
        # (envoy/certs.py --rotate-server) takes effect without a restart.
        "tls_certificate_sds_secret_configs": [{
            "name": "server_cert",
            "sds_config": {"path_config_source": {
                "path": str((certs / SDS_FILE).resolve()),
                "watched_directory": {"path": str(certs.resolve())}},
                "resource_api_version": "V3"}}],
    }
    context: dict = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": common,
    }
    if config.mtls:
        common["validation_context"] = {"trusted_ca": {"filename": str(certs / "ca.crt")}}
        context["require_client_certificate"] = True
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def _front_routes(config: StackConfig) -> list[dict]:
    route = {
            "cluster": "detect_proxy",
            # The caller's grpc-timeout sets the route timeout, capped at the maximum; calls
            # without one get the maximum.
            "timeout": _duration(config.max_grpc_timeout_s),
            "max_stream_duration": {"grpc_timeout_header_max": _duration(config.max_grpc_timeout_s)},
            # Retried here: calls that never reached a proxy, and calls lost with a proxy that
            # died (reset). A proxy's answer, whatever its code, is never retried.
            "retry_policy": {"retry_on": "connect-failure,refused-stream,reset", "num_retries": 2,
                             "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
                             "host_selection_retry_max_attempts": HOST_SELECTION_ATTEMPTS},
    }
    no_buffer = {"envoy.filters.http.buffer": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute",
        "disabled": True}}
    return [
        # Unary Detect calls are buffered whole, which enforces the request size limit.
        {"match": {"prefix": "/detect.v1.Detector/", "grpc": {}}, "route": route},
        # Streaming RPCs (reflection, health Watch) must not be buffered.
        {"match": {"prefix": "/", "grpc": {}}, "route": route,
         "typed_per_filter_config": no_buffer},
    ]


def _egress_routes(config: StackConfig) -> list[dict]:
    return [{
        "match": {"prefix": "/"},
        "route": {
            "cluster": "triton",
            "timeout": _duration(config.max_grpc_timeout_s),
            "max_stream_duration": {"grpc_timeout_header_max": _duration(config.max_grpc_timeout_s)},
            # Retries only for work that never started or was lost with its replica: a refused
            # connection or stream, a replica that died or hung (its connection is closed when
            # a keepalive PING goes unanswered), Triton's UNAVAILABLE while it shuts down. No
            # per-try timeout: a call that is slow because Triton is busy is never sent again,
            # which would double the load exactly when there is no capacity to spare.
            "retry_policy": {
                "retry_on": "unavailable,reset,connect-failure,refused-stream",
                "num_retries": config.num_retries,
                "retry_back_off": {"base_interval": "0.025s", "max_interval": "0.25s"},
                "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
                "host_selection_retry_max_attempts": HOST_SELECTION_ATTEMPTS,
            },
        },
    }]


def _triton_cluster(config: StackConfig) -> dict:
    keepalive = {"interval": f"{config.triton_keepalive_interval_s}s",
                 "timeout": f"{config.triton_keepalive_timeout_s}s"}
    cluster = _cluster("triton", config.tritons, "", config.health_interval_ms, keepalive,
                       config.dns_refresh_s if config.triton_dns else None)
    # Outlier detection reacts to failures a replica answers (INTERNAL, UNAVAILABLE: 5xx as
    # Envoy maps gRPC statuses), never to slowness: timeouts and resets are counted apart
    # (local origin) and not enforced; dead or hung replicas are found by health checks and
    # keepalive PINGs, which a busy replica still answers.
    cluster["outlier_detection"] = {
        "split_external_local_origin_errors": True,
        "consecutive_5xx": 5,
        "enforcing_consecutive_5xx": 100,
        "consecutive_gateway_failure": 5,
        "enforcing_consecutive_gateway_failure": 0,
        "consecutive_local_origin_failure": 5,
        "enforcing_consecutive_local_origin_failure": 0,
        "enforcing_success_rate": 0,
        "enforcing_local_origin_success_rate": 0,
        "interval": "1s",
        "base_ejection_time": "5s",
        "max_ejection_percent": 50,
    }

    cluster["circuit_breakers"] = {"thresholds": [{
        "priority": "DEFAULT",
        "max_connections": 64,
        "max_pending_requests": 1024,
        "max_requests": 1024,
        # When a replica dies, every call it held is retried at once, and those calls no
        # longer count as active: the budget must cover as many retries as there are calls
        # left in flight. It still caps retries at doubling the load on the survivors.
        "retry_budget": {"budget_percent": {"value": 100.0}, "min_retry_concurrency": 64},
    }]}
    return cluster


def _proxy_cluster(config: StackConfig) -> dict:
    cluster = _cluster("detect_proxy", config.proxies, "detect.v1.Detector",
                       config.health_interval_ms,
                       dns_refresh_s=config.dns_refresh_s if config.proxy_dns else None)
    cluster["circuit_breakers"] = {"thresholds": [{
        "priority": "DEFAULT", "max_connections": 1024, "max_pending_requests": 4096,
        "max_requests": 4096, "max_retries": 64}]}
    return cluster


# Stricter limit tiers an operator can switch on at run time (runtime key = 100), as a
# fraction of the configured limits. Token buckets themselves are fixed at start-up in
# Envoy, so run-time changes select among these pre-rendered tiers.
TIERS = {"reduced": 0.25, "lockdown": 0.05}
RUNTIME_ENFORCED = "detect.ratelimit.enforced"


def tier_key(tier: str) -> str:
    return f"detect.ratelimit.{tier}"


def _bucket(rps: int, burst: int) -> dict:
    return {"max_tokens": max(burst, 1), "tokens_per_fill": max(rps, 1), "fill_interval": "1s"}


def _rate_limit_filter(name: str, global_rps: int, global_burst: int, client_rps: int,
                       client_burst: int, enabled_key: str, enabled_default: int) -> dict:
    """A global bucket, plus one bucket per distinct x-client-id (created on first use)."""
    return {"name": "envoy.filters.http.local_ratelimit", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": name,
        "rate_limited_as_resource_exhausted": True,
        "token_bucket": _bucket(global_rps, global_burst),
        "filter_enabled": {"runtime_key": enabled_key,
                           "default_value": {"numerator": enabled_default, "denominator": "HUNDRED"}},
        "filter_enforced": {"runtime_key": RUNTIME_ENFORCED,
                            "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        "rate_limits": [{"actions": [{"request_headers": {
            "header_name": "x-client-id", "descriptor_key": "client", "skip_if_absent": True}}]}],
        "descriptors": [{"entries": [{"key": "client"}],
                         "token_bucket": _bucket(client_rps, client_burst)}],
        "max_dynamic_descriptors": 10000,
        "response_headers_to_add": [{"header": {"key": "x-ratelimit-tier", "value": name},
                                     "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
    }}


def _front_filters(config: StackConfig) -> list[dict]:
    filters: list[dict] = []
    if config.mtls:
        # The verified certificate, not a header the caller could forge, names the client.
        filters.append({"name": "envoy.filters.http.header_mutation", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            # Remove first: a certificate without a URI SAN substitutes nothing, which would
            # otherwise leave a caller-supplied header in place.
            "mutations": {"request_mutations": [{"remove": "x-client-id"}, {"append": {
                "header": {"key": "x-client-id", "value": "%DOWNSTREAM_PEER_URI_SAN%"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}}]}}})
        filters.append({"name": "envoy.filters.http.rbac", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "ALLOW", "policies": {"allowed-clients": {
                "permissions": [{"any": True}],
                "principals": [{"authenticated": {"principal_name": {"exact": client_identity(c)}}}
                               for c in config.allowed_clients]}}}}})
    filters.append(_rate_limit_filter(
        "ratelimit_standard", config.global_rps, config.global_burst, config.client_rps,
        config.client_burst, "detect.ratelimit.standard", 100))
    for tier, fraction in TIERS.items():
        filters.append(_rate_limit_filter(
            f"ratelimit_{tier}", int(config.global_rps * fraction),
            int(config.global_burst * fraction), int(config.client_rps * fraction),
            int(config.client_burst * fraction), tier_key(tier), 0))
    filters.append({"name": "envoy.filters.http.buffer", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
        "max_request_bytes": config.max_request_bytes}})
    filters.append({"name": "envoy.filters.http.grpc_stats", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
        "stats_for_all_methods": True,
        "enable_upstream_stats": True,
        "emit_filter_state": True}})
    return filters


def _ops_listener(config: StackConfig) -> dict:
    """What scrapers and probes outside the host's loopback may see, and nothing more: the
    admin interface can drain and reconfigure Envoy, so only its read-only Prometheus page
    is routed; the proxies' health Check goes through the proxy cluster, so a probe of this
    listener tells whether Envoy is up and has a SERVING proxy behind it."""
    routes: list[dict] = [
        {"match": {"path": "/stats/prometheus"}, "route": {"cluster": "envoy_admin"}},
        {"match": {"path": "/grpc.health.v1.Health/Check", "grpc": {}},
         "route": {"cluster": "detect_proxy", "timeout": "5s"}},
    ]
    if config.proxy_metrics:
        routes.append({"match": {"path": "/metrics"}, "route": {"cluster": "proxy_metrics"}})
    routes.append({"match": {"prefix": "/"}, "direct_response": {"status": 404}})
    return {
        "name": "ops",
        "address": _address(f"{config.front_address}:{config.ops_port}"),
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "ops",
                "codec_type": "AUTO",  # HTTP/1.1 scrapes and h2c gRPC probes
                "route_config": {"name": "ops", "virtual_hosts": [
                    {"name": "ops", "domains": ["*"], "routes": routes}]},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            }}]}],
    }


def _plain_cluster(name: str, host_port: str) -> dict:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": _address(host_port)}}]}]}}


def render(config: StackConfig) -> dict:
    front_hcm = _hcm("front", _front_routes(config), _front_filters(config),
                     config.access_log, edge=True)
    front_hcm["typed_config"]["local_reply_config"] = _too_large_reply(config.max_request_bytes)
    if config.max_connection_duration_s:
        front_hcm["typed_config"]["common_http_protocol_options"] = {
            "max_connection_duration": _duration(config.max_connection_duration_s)}
    front = {
        "name": "front",
        "address": _address(f"{config.front_address}:{config.front_port}"),
        # Inbound: `POST /drain_listeners?graceful&inboundonly` drains callers (GOAWAY)
        # while the egress to Triton stays up for the calls still in flight.
        "traffic_direction": "INBOUND",
        "per_connection_buffer_limit_bytes": 1 << 20,
        "filter_chains": [{
            "filters": [front_hcm],
            "transport_socket": _tls_context(config),
        }],
    }
    egress = {
        "name": "triton_egress",
        "address": _address(f"127.0.0.1:{config.egress_port}"),
        "traffic_direction": "OUTBOUND",
        "filter_chains": [{"filters": [
            _hcm("triton_egress", _egress_routes(config), [], config.access_log, edge=False)]}],
    }
    listeners = [front, egress]
    clusters = [_proxy_cluster(config), _triton_cluster(config)]
    if config.ops_port:
        listeners.append(_ops_listener(config))
        clusters.append(_plain_cluster("envoy_admin", f"127.0.0.1:{config.admin_port}"))
        if config.proxy_metrics:
            clusters.append(_plain_cluster("proxy_metrics", config.proxy_metrics))
    return {
        "node": {"id": "detect-edge", "cluster": "detect"},
        "admin": {"address": _address(f"127.0.0.1:{config.admin_port}"),
                  "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
                      "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                      "path": "/dev/null"}}]},
        "static_resources": {
            "listeners": listeners,
            "clusters": clusters,
        },
        "overload_manager": {"resource_monitors": [{
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                "max_active_downstream_connections": 50000}}]},
        "layered_runtime": {"layers": [
            {"name": "static", "static_layer": {
                "detect.ratelimit.standard": 100,
                RUNTIME_ENFORCED: 100,
                **{tier_key(t): 0 for t in TIERS}}},
            {"name": "admin", "admin_layer": {}},
        ]},
    }


def validate(path: Path, envoy: str = "envoy") -> None:
    """Envoy's own check: the same binary parses and instantiates the whole config."""
    result = subprocess.run([envoy, "--mode", "validate", "-c", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"envoy rejected {path}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")


def build_parser() -> argparse.ArgumentParser:
    d = StackConfig(proxies=[], tritons=[], cert_dir=Path("build/certs"))
    p = argparse.ArgumentParser(description="Render (and validate) Envoy's configuration.")
    p.add_argument("--out", type=Path, default=Path("build/envoy/envoy.yaml"))
    p.add_argument("--proxy", action="append", required=True, help="proxy host:port (repeatable)")
    p.add_argument("--triton", action="append", required=True,
                   help="Triton replica host:port (repeatable)")
    p.add_argument("--cert-dir", type=Path, default=d.cert_dir)
    p.add_argument("--front-address", default=d.front_address)
    p.add_argument("--front-port", type=int, default=d.front_port)
    p.add_argument("--egress-port", type=int, default=d.egress_port)
    p.add_argument("--admin-port", type=int, default=d.admin_port)
    p.add_argument("--mtls", action="store_true", help="require client certificates + RBAC")
    p.add_argument("--allow-client", action="append", dest="allowed_clients",
                   help=f"client identity allowed in mTLS mode (repeatable; default: "
                        f"{', '.join(d.allowed_clients)})")
    for name in ("global_rps", "global_burst", "client_rps", "client_burst",
                 "max_request_bytes", "num_retries", "triton_keepalive_interval_s",
                 "triton_keepalive_timeout_s", "health_interval_ms"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("max_grpc_timeout_s",):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    p.add_argument("--access-log", default=d.access_log)
    p.add_argument("--proxy-dns", action="store_true",
                   help="--proxy values are DNS names resolved continually (STRICT_DNS)")
    p.add_argument("--triton-dns", action="store_true",
                   help="--triton values are DNS names resolved continually (STRICT_DNS), "
                        "e.g. a Kubernetes headless Service")
    p.add_argument("--dns-refresh-s", type=float, default=d.dns_refresh_s)
    p.add_argument("--ops-port", type=int, default=d.ops_port,
                   help="plaintext listener on --front-address for /stats/prometheus, the "
                        "proxy's /metrics and gRPC health Check (0: none)")
    p.add_argument("--proxy-metrics", default=d.proxy_metrics,
                   help="proxy metrics host:port served as /metrics on --ops-port")
    p.add_argument("--max-connection-duration-s", type=float,
                   default=d.max_connection_duration_s,
                   help="close front connections gracefully after this long (0: never)")
    p.add_argument("--envoy", default=str(Path(sys.executable).parent / "envoy"),
                   help="envoy binary used for validation")
    p.add_argument("--no-validate", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    values = {k: v for k, v in vars(args).items()
              if k not in ("out", "envoy", "no_validate", "proxy", "triton") and v is not None}
    config = StackConfig(proxies=args.proxy, tritons=args.triton, **values)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(render(config), indent=2) + "\n")
    if not args.no_validate:
        validate(args.out, args.envoy)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
