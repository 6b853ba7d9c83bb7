"""The whole stack on loopback for tests: Triton x2 (localtriton or genuine), proxy x2, Envoy."""

from __future__ import annotations

import contextlib
import json
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from detect_envoy import certs as pki
from detect_envoy import render
from detect_stack.servers import LOCALTRITON, Process, free_port, proxy, running, triton_server

# Keepalive pairing shipped for production (README): Triton accepts pings on idle
# connections no more often than Envoy's connection_keepalive sends them.
TRITON_KEEPALIVE_FLAGS = ("--grpc-keepalive-permit-without-calls", "true",
                          "--grpc-http2-min-recv-ping-interval-without-data", "4000")


def make_certs(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    ca = pki.make_ca(directory)
    pki.make_server(directory, ca, ["localhost", "127.0.0.1"])
    pki.publish_server_sds(directory)
    for name in pki.DEFAULT_CLIENTS:
        pki.make_client(directory, ca, name)
    return directory


def admin_get(admin_port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}{path}", timeout=5) as r:
        return r.read().decode()


def admin_post(admin_port: int, path: str) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{admin_port}{path}", method="POST")
    with urllib.request.urlopen(request, timeout=5) as r:
        return r.read().decode()


def healthy_hosts(admin_port: int, cluster: str) -> int:
    clusters = json.loads(admin_get(admin_port, "/clusters?format=json"))
    for status in clusters.get("cluster_statuses", []):
        if status["name"] == cluster:
            health = [h.get("health_status", {}) for h in status.get("host_statuses", [])]
            return sum(1 for h in health
                       if h.get("eds_health_status", "HEALTHY") == "HEALTHY"
                       and not any(k.startswith("failed") for k in h))
    return 0


def host_counter(admin_port: int, cluster: str, stat: str = "rq_total") -> dict[str, int]:
    """Per-host counter from /clusters, e.g. rq_total for each proxy or replica."""
    out: dict[str, int] = {}
    for line in admin_get(admin_port, "/clusters").splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == cluster and parts[2] == stat:
            out[parts[1]] = int(parts[3])
    return out


@dataclass
class Envoy:
    front: str
    admin_port: int
    egress_port: int
    certs: Path
    process: Process

    def channel(self, client: str | None = None, ca: bool = True) -> grpc.Channel:
        if not ca:
            return grpc.insecure_channel(self.front)
        def read(name: str) -> bytes:
            return (self.certs / name).read_bytes()

        creds = grpc.ssl_channel_credentials(
            read("ca.crt"),
            read(f"client-{client}.key") if client else None,
            read(f"client-{client}.crt") if client else None)
        return grpc.secure_channel(self.front, creds,
                                   options=[("grpc.ssl_target_name_override", "localhost")])


@contextlib.contextmanager
def envoy(tmp_path: Path, certs: Path, proxies: list[str], tritons: list[str],
          egress_port: int | None = None, **settings) -> Iterator[Envoy]:
    front_port, admin_port = free_port(), free_port()
    egress_port = egress_port or free_port()
    config = render.StackConfig(
        proxies=proxies, tritons=tritons, cert_dir=certs, front_port=front_port,
        egress_port=egress_port, admin_port=admin_port,
        access_log=str(tmp_path / f"access-{front_port}.log"), **settings)
    path = tmp_path / f"envoy-{front_port}.yaml"
    path.write_text(render.to_yaml(render.render(config)))
    envoy_bin = str(Path(sys.executable).parent / "envoy")
    render.validate(path, envoy_bin)

    def ready() -> bool:
        return (admin_get(admin_port, "/ready").strip() == "LIVE"
                and healthy_hosts(admin_port, "triton") == len(tritons)
                and (not proxies or healthy_hosts(admin_port, "detect_proxy") == len(proxies)))

    args = [envoy_bin, "-c", str(path), "--log-level", "warn",
            "--base-id", str(front_port), "--concurrency", "2", "--file-flush-interval-msec", "200"]
    with running(args, tmp_path / f"envoy-{front_port}.log", ready) as proc:
        yield Envoy(f"127.0.0.1:{front_port}", admin_port, egress_port, certs, proc)


@dataclass
class Stack:
    envoy: Envoy
    tritons: list[tuple[str, Process]] = field(default_factory=list)
    proxies: list[tuple[str, Process]] = field(default_factory=list)
    # Prometheus targets (host:port) of each part.
    triton_metrics: list[str] = field(default_factory=list)
    proxy_metrics: list[str] = field(default_factory=list)


@contextlib.contextmanager
def stack(tmp_path: Path, replicas: int = 2, proxies: int = 2,
          triton_flags: tuple[str, ...] = TRITON_KEEPALIVE_FLAGS,
          proxy_flags: tuple[str, ...] = (), backend: str = LOCALTRITON,
          triton_tls: bool = False, **settings) -> Iterator[Stack]:
    """With ``triton_tls`` the replicas serve TLS (the stack's certificates) and Envoy's
    egress originates it, as between hosts."""
    certs = make_certs(tmp_path / "certs")
    if triton_tls:
        settings = {"triton_tls_ca": str(certs / "ca.crt"),
                    "triton_tls_server_name": "localhost", **settings}
    egress_port = free_port()
    proxy_ports = [free_port() for _ in range(proxies)]
    triton_metrics = [f"127.0.0.1:{free_port()}" for _ in range(replicas)]
    proxy_metrics = [f"127.0.0.1:{free_port()}" for _ in range(proxies)]
    with contextlib.ExitStack() as es:
        tritons = [es.enter_context(triton_server(backend, tmp_path, *triton_flags,
                                                  "--metrics-port", m.rsplit(":", 1)[1],
                                                  tls=certs if triton_tls else None))
                   for m in triton_metrics]
        started: list[tuple[str, Process]] = []
        edge = es.enter_context(_envoy_then_proxies(
            tmp_path, certs, proxy_ports, proxy_metrics, [url for url, _ in tritons],
            egress_port, started, settings, proxy_flags))
        yield Stack(edge, tritons, started, triton_metrics, proxy_metrics)


@contextlib.contextmanager
def _envoy_then_proxies(tmp_path, certs, proxy_ports, proxy_metrics, tritons, egress_port,
                        started, settings, proxy_flags=()) -> Iterator[Envoy]:
    with contextlib.ExitStack() as es:
        # Envoy's readiness waits for healthy proxies, so start them against its egress
        # port first; they report NOT_SERVING until the egress listener is up.
        for port, metrics in zip(proxy_ports, proxy_metrics, strict=True):
            started.append(es.enter_context(proxy(
                tmp_path, f"127.0.0.1:{egress_port}", *proxy_flags, port=port, wait_serving=False,
                metrics_port=int(metrics.rsplit(":", 1)[1]))))
        edge = es.enter_context(envoy(tmp_path, certs, [f"127.0.0.1:{p}" for p in proxy_ports],
                                      tritons, egress_port=egress_port, **settings))
        deadline = time.monotonic() + 30
        while healthy_hosts(edge.admin_port, "detect_proxy") < len(proxy_ports):
            if time.monotonic() > deadline:
                raise RuntimeError("proxies never became healthy behind Envoy")
            time.sleep(0.1)
        yield edge
