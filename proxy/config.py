"""Every proxy setting: a command-line flag with a DETECT_PROXY_* environment twin.

This module is the one place that documents them (``python -m detect_proxy --help`` prints it).
Keepalive defaults match Triton's default server policy: pings only while calls are in
flight and never more often than Triton's 5-minute minimum, so Triton never answers with
GOAWAY too_many_pings. Tighter values need the matching tritonserver flags (README).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields

from .image_header import ImageLimits


@dataclass(frozen=True)
class ProxyConfig:
    listen: str = "127.0.0.1:50051"
    processes: int = 1
    triton_url: str = "127.0.0.1:8001"
    pool_size: int = 2
    default_model: str = "face_detector"
    max_image_bytes: int = 8 * 1024 * 1024
    max_image_width: int = 4096
    max_image_height: int = 4096
    max_in_flight: int = 256
    max_upstream_calls: int = 8
    max_queue_wait_ms: int = 20_000
    upstream_timeout_ms: int = 30_000
    batch_max_wait_us: int = 0
    batch_max_size: int = 0
    retry_max_attempts: int = 2
    retry_backoff_base_ms: int = 25
    retry_backoff_max_ms: int = 250
    retry_budget_ratio: float = 0.2
    breaker_failure_threshold: int = 5
    breaker_open_ms: int = 1_000
    keepalive_time_ms: int = 300_000
    keepalive_timeout_ms: int = 20_000
    keepalive_permit_without_calls: bool = False
    http2_max_pings_without_data: int = 2
    max_reconnect_backoff_ms: int = 1_000
    health_interval_ms: int = 1_000
    health_failure_threshold: int = 2
    drain_delay_s: float = 2.0
    shutdown_grace_s: float = 10.0
    metrics_port: int = 9464
    trace_exporter: str = "none"
    log_level: str = "info"

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(self.max_image_bytes, self.max_image_width, self.max_image_height)


HELP: dict[str, str] = {
    "listen": "address to serve on: host:port (loopback by default) or unix:/path/to.sock",
    "processes": "proxy processes to run; process i listens on the --listen port + i "
                 "(and metrics port + i)",
    "triton_url": "Triton (or Envoy's Triton egress) gRPC address, host:port",
    "pool_size": "persistent HTTP/2 connections to Triton shared by all callers",
    "default_model": "model used when a request names none",
    "max_image_bytes": "largest encoded image accepted, in bytes",
    "max_image_width": "widest image accepted, in pixels (read from the header)",
    "max_image_height": "tallest image accepted, in pixels (read from the header)",
    "max_in_flight": "calls handled at once; more get RESOURCE_EXHAUSTED immediately",
    "max_upstream_calls": "calls sent to Triton at once; the rest wait their turn in the "
                          "proxy, where their deadline is checked against the expected wait",
    "max_queue_wait_ms": "longest expected wait a call is queued for; a call whose expected "
                         "wait exceeds this or its own deadline gets RESOURCE_EXHAUSTED at once",
    "upstream_timeout_ms": "timeout of the Triton call when the caller sets no deadline",
    "batch_max_wait_us": "aggregate concurrent calls for a model into one ModelInfer, "
                         "waiting at most this long for company (0: off)",
    "batch_max_size": "cap on images per aggregated ModelInfer (0: the model's max_batch_size)",
    "retry_max_attempts": "retries of a Triton call that got no answer (UNAVAILABLE); 0 disables",
    "retry_backoff_base_ms": "first retry waits up to this long (full jitter, doubling)",
    "retry_backoff_max_ms": "upper bound of a retry's wait",
    "retry_budget_ratio": "retries may add at most this fraction of the call rate",
    "breaker_failure_threshold": "consecutive UNAVAILABLE answers that open the circuit breaker",
    "breaker_open_ms": "how long an open breaker fails calls at once before probing Triton",
    "keepalive_time_ms": "ms between keepalive pings to Triton (Triton's minimum: 300000)",
    "keepalive_timeout_ms": "ms to wait for a ping ack before dropping the connection",
    "keepalive_permit_without_calls": "ping idle connections too (Triton refuses by default)",
    "http2_max_pings_without_data": "pings sent without data in between (0: unlimited)",
    "max_reconnect_backoff_ms": "upper bound of the reconnect backoff to Triton",
    "health_interval_ms": "how often Triton and the default model are checked for readiness",
    "health_failure_threshold": "consecutive failed checks before health says NOT_SERVING",
    "drain_delay_s": "on SIGTERM/SIGINT, seconds to keep serving while health says "
                     "NOT_SERVING, so balancers stop sending before the listener closes",
    "shutdown_grace_s": "then, seconds in-flight calls get to finish",
    "metrics_port": "Prometheus metrics port on 127.0.0.1 (0 disables)",
    "trace_exporter": "where spans go: none (trace context is still forwarded) or console",
    "log_level": "debug, info (a JSON line per call), warning or error",
}


def env_name(field: str) -> str:
    return "DETECT_PROXY_" + field.upper()


def _bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detect-proxy",
        description="gRPC detect.v1.Detector proxy in front of Triton Inference Server. "
                    "Each flag can also be set through the environment variable shown.")
    defaults = ProxyConfig()
    for f in fields(ProxyConfig):
        kind = _bool if f.type in ("bool", bool) else {"int": int, "float": float}.get(
            str(f.type), str)
        env = env_name(f.name)
        default = getattr(defaults, f.name)
        if env in os.environ:
            default = kind(os.environ[env])
        parser.add_argument("--" + f.name.replace("_", "-"), type=kind, default=default,
                            help=f"{HELP[f.name]} [env {env}; default: %(default)s]")
    return parser


def parse(argv: list[str] | None = None) -> ProxyConfig:
    config = ProxyConfig(**vars(build_parser().parse_args(argv)))
    if config.processes < 1:
        raise SystemExit("--processes must be at least 1")
    if config.pool_size < 1:
        raise SystemExit("--pool-size must be at least 1")
    if config.max_in_flight < 1:
        raise SystemExit("--max-in-flight must be at least 1")
    if config.max_upstream_calls < 1:
        raise SystemExit("--max-upstream-calls must be at least 1")
    if config.max_queue_wait_ms < 0:
        raise SystemExit("--max-queue-wait-ms must be at least 0")
    return config
