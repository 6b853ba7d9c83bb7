"""The listeners: where callers come in (front), where the proxies reach Triton (egress), and
what scrapers and probes may see (ops).

Front: TLS (optionally mTLS with an RBAC allowlist), gRPC health that fails while Envoy is
failing health checks, local rate limits, the request size limit (answered like the proxy's
own, INVALID_ARGUMENT naming the limit), a route timeout from grpc-timeout with a maximum,
gRPC stats (tagged with whole service and method names: envoy/stats.py), a JSON access log and
x-request-id, routing to the proxies. Egress, on loopback: retries of calls lost with their
replica, routing to Triton (not drained by a failing health check). Ops (optional,
plaintext): Envoy's Prometheus page, the proxy's /metrics and the proxies' gRPC health
Check, and nothing else.
"""

from __future__ import annotations

from typing import Any, Final

from detect_envoy import clusters
from detect_envoy.certs import SDS_FILE, client_identity
from detect_envoy.ratelimits import rate_limit_filters
from detect_envoy.settings import StackConfig
from detect_envoy.typed import address, duration, extension, typed
from detect_proxy.contract import (
    DETECT_BATCH,
    DETECT_STREAM,
    GROUP_HEADER,
    OPERATIONS_SERVICE,
    SERVICE,
)

# A retry avoids the host that just failed by drawing again, up to this many times. With
# least-request balancing a dead host has no calls in flight, so it keeps winning the draw:
# a few attempts are not enough to get away from it before health checks notice.
HOST_SELECTION_ATTEMPTS: Final = 20

HEALTH_CHECK_PATH: Final = "/grpc.health.v1.Health/Check"
DRAINING_MESSAGE: Final = ("this Envoy is failing health checks (draining): send calls to "
                           "another instance")

HTTP2_OPTIONS: Final[dict[str, int]] = {"max_concurrent_streams": 1024,
                                        "initial_stream_window_size": 1 << 20,
                                        "initial_connection_window_size": 16 << 20}


# ---------------------------------------------------------------- front


def front_listener(config: StackConfig) -> dict[str, Any]:
    """TLS from callers to the proxies, through the filters in _front_filters' order."""
    options: dict[str, Any] = {"local_reply_config": {"mappers": [
        _too_large_reply(config.max_request_bytes, config.max_batch_request_bytes),
        _failing_health_reply()]}}
    if config.max_connection_duration_s:
        options["common_http_protocol_options"] = {
            "max_connection_duration": duration(config.max_connection_duration_s)}
    hcm = _http_connection_manager("front", _front_routes(config), _front_filters(config),
                                   config.access_log, edge=True, **options)
    return {
        "name": "front",
        "address": address(f"{config.front_address}:{config.front_port}"),
        # Inbound: `POST /drain_listeners?graceful&inboundonly` drains callers (GOAWAY)
        # while the egress to Triton stays up for the calls still in flight.
        "traffic_direction": "INBOUND",
        "per_connection_buffer_limit_bytes": 1 << 20,
        "filter_chains": [{"filters": [hcm], "transport_socket": _tls(config)}],
    }


def _front_filters(config: StackConfig) -> list[dict[str, Any]]:
    filters: list[dict[str, Any]] = []
    if config.mtls:
        filters += _client_identity(config.allowed_clients, config.operator_clients)
    else:
        filters.append(_no_operations())
    # Before the rate limits: a failing Envoy's health answer is immediate, never a
    # RESOURCE_EXHAUSTED that a load balancer would read as something else.
    filters.append(_health_while_failing())
    filters += rate_limit_filters(config)
    # Buffers whole requests (unless a route disables it), refusing larger ones with 413.
    filters.append(extension("envoy.filters.http.buffer", "Buffer",
                             max_request_bytes=config.max_request_bytes))
    filters.append(extension("envoy.filters.http.grpc_stats", "GrpcStats",
                             stats_for_all_methods=True,
                             enable_upstream_stats=True,
                             emit_filter_state=True))
    return filters


def _operations() -> dict[str, Any]:
    return {"url_path": {"path": {"prefix": f"/{OPERATIONS_SERVICE}/"}}}


def _principals(clients: list[str]) -> list[dict[str, Any]]:
    return [{"authenticated": {"principal_name": {"exact": client_identity(c)}}}
            for c in clients]


def _no_operations() -> dict[str, Any]:
    """Without client certificates no caller is known to be an operator."""
    return extension("envoy.filters.http.rbac", "RBAC", rules={
        "action": "DENY", "policies": {"operations": {
            "permissions": [_operations()], "principals": [{"any": True}]}}})


def _client_identity(allowed_clients: list[str],
                     operator_clients: list[str]) -> list[dict[str, Any]]:
    """The verified certificate, not a header the caller could forge, names the client; only
    the allowed identities may call the Detector, only operators the proxy's Operations."""
    set_client_id = extension(
        "envoy.filters.http.header_mutation", "HeaderMutation",
        # Remove first: a certificate without a URI SAN substitutes nothing, which would
        # otherwise leave a caller-supplied header in place.
        mutations={"request_mutations": [{"remove": "x-client-id"}, {"append": {
            "header": {"key": "x-client-id", "value": "%DOWNSTREAM_PEER_URI_SAN%"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}}]})
    allowlist = extension(
        "envoy.filters.http.rbac", "RBAC",
        rules={"action": "ALLOW", "policies": {
            "allowed-clients": {"permissions": [{"not_rule": _operations()}],
                                "principals": _principals(allowed_clients)},
            **({"operators": {"permissions": [_operations()],
                              "principals": _principals(operator_clients)}}
               if operator_clients else {})}})
    return [set_client_id, allowlist]


def _front_routes(config: StackConfig) -> list[dict[str, Any]]:
    def route() -> dict[str, Any]:
        return {
            "cluster": clusters.PROXY,
            # The caller's grpc-timeout sets the route timeout, capped at the maximum; calls
            # without one get the maximum.
            **_grpc_timeouts(config.max_grpc_timeout_s),
            # Retried here: calls that never reached a proxy, and calls lost with a proxy
            # that died (reset). A proxy's answer, whatever its code, is never retried.
            "retry_policy": {"retry_on": "connect-failure,refused-stream,reset",
                             "num_retries": 2,
                             **_retry_another_host()},
        }

    batch, stream = f"/{SERVICE}/{DETECT_BATCH}", f"/{SERVICE}/{DETECT_STREAM}"
    return [
        # A batch is buffered whole too, up to its own limit.
        {"match": {"path": batch, "grpc": {}}, "route": route(),
         "typed_per_filter_config": {"envoy.filters.http.buffer": typed(
             "BufferPerRoute", buffer={"max_request_bytes": config.max_batch_request_bytes})}},
        # A stream is not buffered (the proxy's window and HTTP/2 flow control bound it) and
        # has no route timeout: it lasts up to its own maximum, or the caller's deadline.
        {"match": {"path": stream, "grpc": {}}, "route": {
            **route(), "timeout": "0s",
            "max_stream_duration": {
                "max_stream_duration": duration(config.max_stream_duration_s),
                "grpc_timeout_header_max": duration(config.max_stream_duration_s)}},
         "typed_per_filter_config": {
             "envoy.filters.http.buffer": typed("BufferPerRoute", disabled=True)}},
        # Unary Detect calls are buffered whole, which enforces the request size limit.
        {"match": {"prefix": f"/{SERVICE}/", "grpc": {}}, "route": route()},
        # Streaming RPCs (reflection, health Watch) must not be buffered.
        {"match": {"prefix": "/", "grpc": {}}, "route": route(),
         "typed_per_filter_config": {
             "envoy.filters.http.buffer": typed("BufferPerRoute", disabled=True)}},
    ]


def _too_large_reply(limit: int, batch_limit: int) -> dict[str, Any]:
    """Envoy's own size limit answers as the proxy's does: INVALID_ARGUMENT naming the limit
    (for gRPC, Envoy would derive UNKNOWN from HTTP 413 and say "Payload Too Large")."""
    return {
        "filter": {"status_code_filter": {"comparison": {
            "op": "EQ", "value": {"default_value": 413, "runtime_key": "detect.too_large_code"}}}},
        "headers_to_add": [{"header": {"key": "grpc-status", "value": "3"},
                            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
        # A gRPC local reply carries its body as grpc-message.
        "body": {"inline_string": f"request is larger than the limit of {limit} bytes "
                                  f"({batch_limit} for DetectBatch); send a smaller image, or "
                                  "fewer images per batch"},
    }


def _health_while_failing() -> dict[str, Any]:
    """gRPC health Checks through the front follow the proxies while this Envoy is healthy
    (pass-through: the proxies answer SERVING or NOT_SERVING), and are answered by Envoy
    itself once an operator fails it (``POST /healthcheck/fail``), so a load balancer in
    front takes this Envoy out of rotation while it keeps serving the calls still sent to it.
    """
    return extension(
        "envoy.filters.http.health_check", "HealthCheck",
        pass_through_mode=True,
        headers=[{"name": ":path", "string_match": {"exact": HEALTH_CHECK_PATH}}])


def _failing_health_reply() -> dict[str, Any]:
    """Envoy's answer to a health Check while it fails health checks is HTTP 503, which a
    gRPC caller gets as UNAVAILABLE; the message says why."""
    return {
        "filter": {"response_flag_filter": {"flags": ["LH"]}},
        "body": {"inline_string": DRAINING_MESSAGE},
    }


def _tls(config: StackConfig) -> dict[str, Any]:
    certs = config.cert_dir
    common: dict[str, Any] = {
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
    context = typed("DownstreamTlsContext", common_tls_context=common)
    if config.mtls:
        common["validation_context"] = {"trusted_ca": {"filename": str(certs / "ca.crt")}}
        context["require_client_certificate"] = True
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


# ---------------------------------------------------------------- egress


def egress_listener(config: StackConfig) -> dict[str, Any]:
    """The proxies' way to Triton, on loopback: plaintext HTTP/2 (gRPC)."""
    hcm = _http_connection_manager("triton_egress", _egress_routes(config), [],
                                   config.access_log, edge=False)
    return {
        "name": "triton_egress",
        "address": address(f"127.0.0.1:{config.egress_port}"),
        "traffic_direction": "OUTBOUND",
        # `POST /healthcheck/fail` drains callers off the front (GOAWAY after each call);
        # the proxies' pooled connections to Triton stay up meanwhile.
        "drain_type": "MODIFY_ONLY",
        "filter_chains": [{"filters": [hcm]}],
    }


def _egress_routes(config: StackConfig) -> list[dict[str, Any]]:
    """A call naming a Triton group (the proxy's x-detect-group header) goes to that group's
    cluster; any other to the replicas of --triton."""
    routes: list[tuple[dict[str, Any], str]] = [
        ({"prefix": "/", "headers": [{"name": GROUP_HEADER, "string_match": {"exact": g.name}}]},
         clusters.group_cluster_name(g.name)) for g in config.groups]
    routes.append(({"prefix": "/"}, clusters.TRITON))
    return [_egress_route(config, match, cluster) for match, cluster in routes]


def _egress_route(config: StackConfig, match: dict[str, Any], cluster: str) -> dict[str, Any]:
    return {
        "match": match,
        "route": {
            "cluster": cluster,
            **_grpc_timeouts(config.max_grpc_timeout_s),
            # Retries only for work that never started or was lost with its replica: a
            # refused connection or stream, a replica that died or hung (its connection is
            # closed when a keepalive PING goes unanswered), Triton's UNAVAILABLE while it
            # shuts down. No per-try timeout: a call that is slow because Triton is busy is
            # never sent again, which would double the load exactly when there is no
            # capacity to spare.
            "retry_policy": {
                "retry_on": "unavailable,reset,connect-failure,refused-stream",
                "num_retries": config.num_retries,
                "retry_back_off": {"base_interval": "0.025s", "max_interval": "0.25s"},
                **_retry_another_host(),
            },
        },
    }


# ---------------------------------------------------------------- ops


def ops_listener(config: StackConfig) -> dict[str, Any]:
    """What scrapers and probes outside the host's loopback may see, and nothing more: the
    admin interface can drain and reconfigure Envoy, so only its read-only Prometheus page
    is routed; the proxies' health Check goes through the proxy cluster, so a probe of this
    listener tells whether Envoy is up and has a SERVING proxy behind it."""
    routes: list[dict[str, Any]] = [
        {"match": {"path": "/stats/prometheus"}, "route": {"cluster": clusters.ADMIN}},
        {"match": {"path": HEALTH_CHECK_PATH, "grpc": {}},
         "route": {"cluster": clusters.PROXY, "timeout": "5s"}},
    ]
    if config.proxy_metrics:
        routes.append({"match": {"path": "/metrics"},
                       "route": {"cluster": clusters.PROXY_METRICS}})
    routes.append({"match": {"prefix": "/"}, "direct_response": {"status": 404}})
    hcm = extension(
        "envoy.filters.network.http_connection_manager", "HttpConnectionManager",
        stat_prefix="ops",
        codec_type="AUTO",  # HTTP/1.1 scrapes and h2c gRPC probes
        route_config=_route_config("ops", routes),
        http_filters=[_router()])
    return {
        "name": "ops",
        "address": address(f"{config.front_address}:{config.ops_port}"),
        "filter_chains": [{"filters": [hcm]}],
    }


# ---------------------------------------------------------------- shared


def _http_connection_manager(name: str, routes: list[dict[str, Any]],
                             filters: list[dict[str, Any]], access_log: str, *, edge: bool,
                             **options: Any) -> dict[str, Any]:
    """HTTP/2 (gRPC) through the filters, then the router, to the routes. At the edge (front)
    the caller's address is the connection's own, and HTTP/1.1 is accepted too."""
    return extension(
        "envoy.filters.network.http_connection_manager", "HttpConnectionManager",
        stat_prefix=name,
        codec_type="AUTO" if edge else "HTTP2",
        use_remote_address=edge,
        generate_request_id=True,
        preserve_external_request_id=True,
        http2_protocol_options=dict(HTTP2_OPTIONS),
        stream_idle_timeout="300s",
        access_log=_access_log(access_log, name),
        route_config=_route_config(name, routes),
        http_filters=[*filters, _router()],
        **options)


def _route_config(name: str, routes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": name, "virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}]}


def _router() -> dict[str, Any]:
    return extension("envoy.filters.http.router", "Router")


def _grpc_timeouts(max_s: float) -> dict[str, Any]:
    return {"timeout": duration(max_s),
            "max_stream_duration": {"grpc_timeout_header_max": duration(max_s)}}


def _retry_another_host() -> dict[str, Any]:
    """A retry goes to another host than the attempts before it, if there is one."""
    return {"retry_host_predicate": [extension("envoy.retry_host_predicates.previous_hosts",
                                               "PreviousHostsPredicate")],
            "host_selection_retry_max_attempts": HOST_SELECTION_ATTEMPTS}


def _access_log(path: str, listener: str) -> list[dict[str, Any]]:
    return [extension("envoy.access_loggers.file", "FileAccessLog", path=path, log_format={
        "json_format": {
            "time": "%START_TIME%",
            "listener": listener,
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
        }})]
