"""The settings of one Envoy, each with its default and its help text in one place.

``StackConfig`` is what the renderer reads; the command line of ``detect_envoy.render`` is
built from its fields (``metadata["help"]``), so a new setting is a flag, documented in
``--help`` with its default, as soon as it is declared here. Metadata keys:

- ``help``: the flag's help text;
- ``flag``: the flag's name when it is not the field's (``proxies`` is ``--proxy``);
- ``cli_default``: the command line's default for a field the dataclass requires.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from detect_proxy.contract import request_limit_bytes
from detect_proxy.group_spec import GroupSpec, parse_groups


@dataclass
class StackConfig:
    """What one Envoy routes to, where it listens, and the limits it applies to callers."""

    # Replicas, as host:port, or DNS names re-resolved every dns_refresh_s (STRICT_DNS).
    proxies: list[str] = field(metadata={
        "flag": "--proxy",
        "help": "proxy host:port, or a DNS name with --proxy-dns (repeatable)"})
    tritons: list[str] = field(metadata={
        "flag": "--triton",
        "help": "Triton replica host:port, or a DNS name with --triton-dns (repeatable)"})
    cert_dir: Path = field(metadata={
        "cli_default": Path("build/certs"),
        "help": "directory of the server certificate's SDS file (server-sds.json), watched "
                "for rotation, and of ca.crt for --mtls"})

    triton_groups: list[str] = field(default_factory=list, metadata={
        "flag": "--triton-group",
        "help": "a Triton group, NAME=HOST:PORT[,HOST:PORT...] (repeatable): its own cluster "
                "triton_NAME (health checks, outlier detection, retries per group), reached "
                "by calls whose x-detect-group header names it; --triton serves calls naming "
                "no group"})

    # Listeners
    front_address: str = field(default="127.0.0.1", metadata={
        "help": "address of the front (TLS) listener and of the ops listener"})
    front_port: int = field(default=8443, metadata={"help": "front (TLS) listener port"})
    egress_port: int = field(default=8001, metadata={
        "help": "Triton egress listener port, on 127.0.0.1, where the proxies send their calls"})
    admin_port: int = field(default=9901, metadata={
        "help": "Envoy admin interface port, on 127.0.0.1 only"})
    ops_port: int = field(default=0, metadata={
        "help": "plaintext listener on --front-address for /stats/prometheus, the proxy's "
                "/metrics and gRPC health Check (0: none)"})
    proxy_metrics: str = field(default="", metadata={
        "help": "proxy metrics host:port served as /metrics on --ops-port (empty: not served)"})
    access_log: str = field(default="/dev/stdout", metadata={
        "help": "file of the JSON access log (front and egress listeners)"})

    # Callers
    mtls: bool = field(default=False, metadata={
        "help": "require client certificates signed by ca.crt, and an allowlist (RBAC)"})
    allowed_clients: list[str] = field(default_factory=lambda: ["alpha", "beta"], metadata={
        "flag": "--allow-client",
        "help": "client identity allowed in mTLS mode (repeatable)"})
    operator_clients: list[str] = field(default_factory=list, metadata={
        "flag": "--operator-client",
        "help": "client identity allowed to call the proxy's detect.v1.Operations (groups, "
                "model load/unload) through the front, in mTLS mode (repeatable); no one "
                "else can (PERMISSION_DENIED), and no one without mTLS: operators then call "
                "the proxy on its own loopback listener"})
    global_rps: int = field(default=1000, metadata={
        "help": "front rate limit, requests per second, all callers together"})
    global_burst: int = field(default=2000, metadata={
        "help": "front burst, requests, all callers together"})
    client_rps: int = field(default=200, metadata={
        "help": "front rate limit per x-client-id, requests per second"})
    client_burst: int = field(default=400, metadata={
        "help": "front burst per x-client-id, requests"})
    max_request_bytes: int = field(default=request_limit_bytes(), metadata={
        "help": "largest request body the front accepts; the default is the proxy's image "
                "limit plus headroom for the rest of the request (detect_proxy.contract)"})
    max_batch_request_bytes: int = field(default=64 * 1024 * 1024, metadata={
        "help": "largest DetectBatch body the front accepts (buffered whole, like Detect)"})
    max_stream_duration_s: float = field(default=660.0, metadata={
        "help": "longest a DetectStream may last through the front (the proxy ends its own "
                "at --stream-max-duration-s, 600 s by default, with a clearer message)"})
    max_grpc_timeout_s: float = field(default=30.0, metadata={
        "help": "route timeout: the caller's grpc-timeout up to this, and this without one"})
    max_connection_duration_s: float = field(default=0.0, metadata={
        "help": "close front connections gracefully (GOAWAY) after this long, so long-lived "
                "clients re-balance over replicas added since (0: never)"})

    # Upstreams
    num_retries: int = field(default=2, metadata={
        "help": "retries of a Triton call that never started or was lost with its replica"})
    triton_keepalive_interval_s: int = field(default=5, metadata={
        "help": "HTTP/2 PING interval on the connections to Triton"})
    triton_keepalive_timeout_s: int = field(default=3, metadata={
        "help": "a Triton connection whose PING is unanswered this long is closed"})
    triton_tls_ca: str = field(default="", metadata={
        "help": "CA certificate (PEM file) of Triton's gRPC TLS: when set, connections to "
                "the replicas (calls and health checks) are TLS, ALPN h2, their certificate "
                "verified against this CA (empty: plaintext, as on one host)"})
    triton_tls_server_name: str = field(default="", metadata={
        "help": "with --triton-tls-ca: the SNI sent to every replica and the DNS name its "
                "certificate must carry (empty: no SNI, any certificate of the CA)"})
    health_interval_ms: int = field(default=1000, metadata={
        "help": "active gRPC health-check interval, proxies and Triton replicas"})
    proxy_dns: bool = field(default=False, metadata={
        "help": "--proxy values are DNS names resolved continually (STRICT_DNS)"})
    triton_dns: bool = field(default=False, metadata={
        "help": "--triton values are DNS names resolved continually (STRICT_DNS), e.g. a "
                "Kubernetes headless Service"})
    dns_refresh_s: float = field(default=5.0, metadata={
        "help": "how often --proxy-dns / --triton-dns names are resolved again"})

    @property
    def groups(self) -> tuple[GroupSpec, ...]:
        return parse_groups(";".join(self.triton_groups))
