"""The upstreams Envoy balances over: the proxies (behind the front listener) and the Triton
replicas (behind the egress listener), plus the ops listener's two plain local clusters.

Both replica clusters balance by least requests over HTTP/2, take a host out at its first
failed gRPC health check (no panic mode: a dead replica never gets traffic), and list their
hosts either as fixed addresses or as DNS names resolved continually (STRICT_DNS).
Triton's cluster also finds dead or hung replicas through keepalive PINGs, ejects replicas
that answer with errors (outlier detection), and bounds retries with a budget.
"""

from __future__ import annotations

from typing import Any, Final

from detect_envoy.settings import StackConfig
from detect_envoy.typed import address, duration, extension, typed
from detect_proxy.contract import SERVICE

PROXY: Final = "detect_proxy"
TRITON: Final = "triton"
ADMIN: Final = "envoy_admin"  # the admin interface, for the ops listener's /stats/prometheus
PROXY_METRICS: Final = "proxy_metrics"  # the proxy's Prometheus endpoint, for /metrics


def _http2(keepalive: dict[str, str] | None = None) -> dict[str, Any]:
    http2: dict[str, Any] = {"max_concurrent_streams": 1024,
                             "initial_stream_window_size": 1 << 20,
                             "initial_connection_window_size": 16 << 20}
    if keepalive:
        http2["connection_keepalive"] = keepalive
    return {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": typed(
        "HttpProtocolOptions", explicit_http_config={"http2_protocol_options": http2})}


def _grpc_health_checks(service: str, interval_ms: int) -> list[dict[str, Any]]:
    interval = duration(interval_ms / 1000)
    return [{
        # Generous against a busy host's scheduling hiccups; a NOT_SERVING answer still
        # takes the host out at the first check.
        "timeout": duration(2 * interval_ms / 1000),
        "interval": interval,
        "no_traffic_interval": interval,
        "unhealthy_threshold": 1,
        "healthy_threshold": 1,
        "grpc_health_check": {"service_name": service},
    }]


def _strict_dns(refresh_s: float) -> dict[str, Any]:
    """Every address the name resolves to is a host, health-checked on its own; replicas
    that come and go (pods behind a headless Service) are picked up at each refresh.
    (STRICT_DNS, in the typed form that replaces the deprecated cluster fields.)"""
    return {"name": "envoy.cluster.dns", "typed_config": typed(
        "DnsCluster", dns_refresh_rate=duration(refresh_s), dns_lookup_family="V4_PREFERRED",
        all_addresses_in_single_endpoint=False)}


def _endpoints(name: str, hosts: list[str]) -> dict[str, Any]:
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": address(h)}} for h in hosts]}]}


def _replicas(name: str, hosts: list[str], health_service: str, interval_ms: int,
              keepalive: dict[str, str] | None = None,
              dns_refresh_s: float | None = None) -> dict[str, Any]:
    cluster: dict[str, Any] = {"name": name}
    if dns_refresh_s is None:
        cluster["type"] = "STATIC"
    else:
        cluster["cluster_type"] = _strict_dns(dns_refresh_s)
    cluster.update({
        "connect_timeout": "1s",
        "lb_policy": "LEAST_REQUEST",
        "typed_extension_protocol_options": _http2(keepalive),
        "load_assignment": _endpoints(name, hosts),
        "health_checks": _grpc_health_checks(health_service, interval_ms),
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
    })
    return cluster


def proxy_cluster(config: StackConfig) -> dict[str, Any]:
    """The proxies, health-checked on the Detector service's own health status."""
    cluster = _replicas(PROXY, config.proxies, SERVICE, config.health_interval_ms,
                        dns_refresh_s=config.dns_refresh_s if config.proxy_dns else None)
    cluster["circuit_breakers"] = {"thresholds": [{
        "priority": "DEFAULT", "max_connections": 1024, "max_pending_requests": 4096,
        "max_requests": 4096, "max_retries": 64}]}
    return cluster


def group_cluster_name(group: str) -> str:
    return f"{TRITON}_{group}"


def triton_clusters(config: StackConfig) -> list[dict[str, Any]]:
    """The replicas of calls naming no group, then one cluster per Triton group."""
    return [triton_cluster(config, TRITON, config.tritons)] + [
        triton_cluster(config, group_cluster_name(g.name), list(g.replicas))
        for g in config.groups]


def triton_cluster(config: StackConfig, name: str, hosts: list[str]) -> dict[str, Any]:
    """Triton replicas, health-checked on the server as a whole (empty service name)."""
    keepalive = {"interval": f"{config.triton_keepalive_interval_s}s",
                 "timeout": f"{config.triton_keepalive_timeout_s}s"}
    cluster = _replicas(name, hosts, "", config.health_interval_ms, keepalive,
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
    if config.triton_tls_ca:
        cluster["transport_socket"] = _triton_tls(config)
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


def _triton_tls(config: StackConfig) -> dict[str, Any]:
    """TLS to the replicas (tritonserver ``--grpc-use-ssl``), for calls and health checks
    alike: ALPN h2, which gRPC servers expect, the replica's chain verified against the CA,
    and with a server name, SNI and that name among the certificate's DNS SANs."""
    validation: dict[str, Any] = {"trusted_ca": {"filename": config.triton_tls_ca}}
    context: dict[str, Any] = {"common_tls_context": {
        "alpn_protocols": ["h2"], "validation_context": validation}}
    if config.triton_tls_server_name:
        context["sni"] = config.triton_tls_server_name
        validation["match_typed_subject_alt_names"] = [{
            "san_type": "DNS", "matcher": {"exact": config.triton_tls_server_name}}]
    return extension("envoy.transport_sockets.tls", "UpstreamTlsContext", **context)


def _local(name: str, host_port: str) -> dict[str, Any]:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": _endpoints(name, [host_port])}


def ops_clusters(config: StackConfig) -> list[dict[str, Any]]:
    """What the ops listener routes to besides the proxies: the admin interface, and the
    proxy's metrics endpoint when one is configured."""
    clusters = [_local(ADMIN, f"127.0.0.1:{config.admin_port}")]
    if config.proxy_metrics:
        clusters.append(_local(PROXY_METRICS, config.proxy_metrics))
    return clusters
