"""Every proxy setting: a command-line flag with a DETECT_PROXY_* environment twin.

This module is the one place that documents them (``python -m detect_proxy --help`` prints it).
Keepalive defaults match Triton's default server policy: pings only while calls are in
flight and never more often than Triton's 5-minute minimum, so Triton never answers with
GOAWAY too_many_pings. Tighter values need the matching tritonserver flags (README).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from . import contract
from .group_spec import GroupSpec, parse_groups
from .image_header import ImageLimits


def setting(default: Any, help: str) -> Any:
    """A setting's default and its documentation, kept together (``--help`` shows both)."""
    return field(default=default, metadata={"help": help})



@dataclass(frozen=True)
class ProxyConfig:
    listen: str = setting(
        "127.0.0.1:50051",
        "address to serve on: host:port (loopback by default) or unix:/path/to.sock")
    processes: int = setting(
        1, "proxy processes to run; process i listens on the --listen port + i (and metrics "
           "port + i)")
    triton_url: str = setting(
        "127.0.0.1:8001", "Triton (or Envoy's Triton egress) gRPC address, host:port")
    triton_groups: str = setting(
        "", "Triton groups that hold different models: NAME=HOST:PORT[,HOST:PORT...] joined by "
            "';', each group's replicas (a DNS name stands for every address it resolves to). "
            "Each replica is asked which models it has, and a call goes to a group that "
            "serves its model. Empty: one group, --triton-url")
    groups_via_egress: bool = setting(
        True, "with --triton-groups: calls go to --triton-url, Envoy's egress, naming their "
              "group in the x-detect-group header (Envoy's cluster per group balances, "
              "health-checks and retries); false: straight to the group's replicas, round "
              "robin")
    group_refresh_ms: int = setting(
        1_000, "with --triton-groups: how often every replica is asked for its models; "
               "routing follows a load, an unload or an outage within this")
    triton_tls_ca: str = setting(
        "", "with --triton-groups: CA certificate (PEM file) of the replicas' gRPC TLS, for the "
            "proxy's own connections to them (their index, model control, and calls with "
            "--groups-via-egress false); empty: plaintext")
    triton_tls_server_name: str = setting(
        "", "with --triton-tls-ca: the name the replicas' certificates carry (empty: the "
            "address as given)")
    pool_size: int = setting(
        2, "persistent HTTP/2 connections to Triton shared by all callers")
    default_model: str = setting(
        "face_detector", "model used when a request names none")
    exposed_models: str = setting(
        "", "comma-separated models callers may use (ListModels lists them; others answer "
            "NOT_FOUND); empty: every ensemble the model server has")
    max_image_bytes: int = setting(
        contract.MAX_IMAGE_BYTES, "largest encoded image accepted, in bytes")
    max_image_width: int = setting(
        contract.MAX_IMAGE_WIDTH, "widest image accepted, in pixels (read from the header)")
    max_image_height: int = setting(
        contract.MAX_IMAGE_HEIGHT, "tallest image accepted, in pixels (read from the header)")
    max_in_flight: int = setting(
        256, "calls handled at once; more get RESOURCE_EXHAUSTED immediately")
    max_upstream_calls: int = setting(
        8, "calls sent to Triton at once; the rest wait their turn in the proxy, where their"
           " deadline is checked against the expected wait")
    max_queue_wait_ms: int = setting(
        20_000, "longest expected wait a call is queued for; a call whose expected wait exceeds "
                "this or its own deadline gets RESOURCE_EXHAUSTED at once")
    upstream_timeout_ms: int = setting(
        30_000, "timeout of the Triton call when the caller sets no deadline")
    batch_max_wait_us: int = setting(
        0, "aggregate concurrent calls for a model into one ModelInfer, waiting at most this"
           " long for company (0: off)")
    batch_max_size: int = setting(
        0, "cap on images per aggregated ModelInfer (0: the model's max_batch_size)")
    retry_max_attempts: int = setting(
        2, "retries of a Triton call that got no answer (UNAVAILABLE); 0 disables")
    retry_backoff_base_ms: int = setting(
        25, "first retry waits up to this long (full jitter, doubling)")
    retry_backoff_max_ms: int = setting(
        250, "upper bound of a retry's wait")
    retry_budget_ratio: float = setting(
        0.2, "retries may add at most this fraction of the call rate")
    breaker_failure_threshold: int = setting(
        5, "consecutive UNAVAILABLE answers that open the circuit breaker")
    breaker_open_ms: int = setting(
        1_000, "how long an open breaker fails calls at once before probing Triton")
    keepalive_time_ms: int = setting(
        300_000, "ms between keepalive pings to Triton (Triton's minimum: 300000)")
    keepalive_timeout_ms: int = setting(
        20_000, "ms to wait for a ping ack before dropping the connection")
    keepalive_permit_without_calls: bool = setting(
        False, "ping idle connections too (Triton refuses by default)")
    http2_max_pings_without_data: int = setting(
        2, "pings sent without data in between (0: unlimited)")
    max_reconnect_backoff_ms: int = setting(
        1_000, "upper bound of the reconnect backoff to Triton")
    health_interval_ms: int = setting(
        1_000, "how often Triton and the default model are checked for readiness")
    health_failure_threshold: int = setting(
        2, "consecutive failed checks before health says NOT_SERVING")
    drain_delay_s: float = setting(
        2.0, "on SIGTERM/SIGINT, seconds to keep serving while health says NOT_SERVING, so "
             "balancers stop sending before the listener closes")
    shutdown_grace_s: float = setting(
        10.0, "then, seconds in-flight calls get to finish")
    cache_max_bytes: int = setting(
        64 * 1024 * 1024, "in-process result cache, least recently used first out, bounded "
                          "in bytes of answers (0: no in-process tier)")
    cache_ttl_s: float = setting(
        3_600.0, "how long a cached answer is served, in both tiers (0: no caching at all)")
    cache_epoch: str = setting(
        "", "deployment epoch in every cache key: change it (e.g. to the model repository's "
            "revision) when weights change under the same model version; a model's config is "
            "part of the key anyway")
    redis_url: str = setting(
        "", "shared cache tier across proxy processes and pods, redis://host:port/db "
            "(empty: in-process tier only); a Redis outage costs hit rate, never a call")
    redis_timeout_ms: int = setting(
        50, "a Redis lookup or store slower than this counts as a miss (or is dropped)")
    redis_retry_ms: int = setting(
        1_000, "after a Redis error, calls skip Redis this long before it is tried again")
    model_refresh_ms: int = setting(
        2_000, "how often the versions and configs of the models in use are re-read: a new "
               "version or config changes their cache keys within this")
    experiments: str = setting(
        "", "experiments file (TOML, one table per model: weighted variants = versions, sticky "
            "by caller key and salt; optional shadow and guard), re-read when it changes; a "
            "bad file at start stops the proxy, later it is logged and the experiments in "
            "force stay. Empty: none (calls run the latest version unless they pin one)")
    experiments_refresh_ms: int = setting(
        1_000, "how often the experiments file is checked for changes")
    max_batch_images: int = setting(
        16, "most images in one DetectBatch call")
    stream_window: int = setting(
        8, "images of one DetectStream in flight at once; the next is read only when one is "
           "answered, so HTTP/2 flow control holds a faster sender back")
    stream_max_images: int = setting(
        10_000, "most images one DetectStream may carry")
    stream_max_duration_s: float = setting(
        600.0, "longest a DetectStream may last; it then ends with DEADLINE_EXCEEDED after "
               "answering what it accepted")
    metrics_port: int = setting(
        9464, "Prometheus metrics port on 127.0.0.1 (0 disables)")
    trace_exporter: str = setting(
        "none", "where spans go: none (trace context is still forwarded) or console")
    log_level: str = setting(
        "info", "debug, info (a JSON line per call), warning or error")

    @property
    def exposed(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.exposed_models.split(",") if name.strip())

    @property
    def groups(self) -> tuple[GroupSpec, ...]:
        return parse_groups(self.triton_groups)

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(self.max_image_bytes, self.max_image_width, self.max_image_height)




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
        description=f"gRPC {contract.SERVICE} proxy in front of Triton Inference Server. "
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
                            help=f"{f.metadata['help']} [env {env}; default: %(default)s]")
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
    if config.cache_max_bytes < 0 or config.cache_ttl_s < 0:
        raise SystemExit("--cache-max-bytes and --cache-ttl-s must be at least 0")
    if config.redis_url and not config.redis_url.startswith(("redis://", "unix://")):
        raise SystemExit("--redis-url must be redis://host:port[/db] or unix:///path")
    if config.redis_timeout_ms < 1 or config.redis_retry_ms < 0:
        raise SystemExit("--redis-timeout-ms must be at least 1 and --redis-retry-ms at least 0")
    try:
        config.groups  # noqa: B018 (validated by parsing)
    except ValueError as exc:
        raise SystemExit(f"--triton-groups: {exc}") from None
    if config.triton_tls_ca and not Path(config.triton_tls_ca).is_file():
        raise SystemExit(f"--triton-tls-ca: no such file {config.triton_tls_ca}")
    if config.experiments:
        from . import experiments

        try:
            experiments.parse(Path(config.experiments).read_text())
        except (OSError, experiments.ExperimentError) as exc:
            raise SystemExit(f"--experiments: {exc}") from None
    if config.experiments_refresh_ms < 50:
        raise SystemExit("--experiments-refresh-ms must be at least 50")
    if config.group_refresh_ms < 50:
        raise SystemExit("--group-refresh-ms must be at least 50")
    if config.max_batch_images < 1 or config.stream_window < 1 or config.stream_max_images < 1:
        raise SystemExit("--max-batch-images, --stream-window and --stream-max-images must be "
                         "at least 1")
    return config
