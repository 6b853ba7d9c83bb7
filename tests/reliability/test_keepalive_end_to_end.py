"""Envoy's keepalive pings to Triton agree with Triton's ping policy: idle connections stay
up without GOAWAY. The same check catches a mismatch. Times are scaled down (1 s pings)."""

from __future__ import annotations

import time

import tritonclient.grpc as grpcclient

from detect_stack.detector_client import image_input
from detect_stack.stack import admin_get, stack

FAST_PINGS = dict(triton_keepalive_interval_s=1, triton_keepalive_timeout_s=1)


def _stat(admin_port: int, name: str) -> int:
    for line in admin_get(admin_port, f"/stats?filter=^{name}$").splitlines():
        return int(line.split(":")[1])
    return 0


def _idle_then_call(s, images, idle_s: float) -> tuple[int, int]:
    """One call through the Triton egress, then a truly idle connection (no proxies in
    this stack, whose readiness probes would send data every second)."""
    url = f"127.0.0.1:{s.envoy.egress_port}"
    with grpcclient.InferenceServerClient(url) as client:
        client.infer("face_detector", [image_input(images["coffee.png"])])
        before = _stat(s.envoy.admin_port, "cluster.triton.upstream_cx_total")
        time.sleep(idle_s)
        goaways = _stat(s.envoy.admin_port, "cluster.triton.upstream_cx_close_notify")
        client.infer("face_detector", [image_input(images["coffee.png"])])
        new_connections = _stat(s.envoy.admin_port, "cluster.triton.upstream_cx_total") - before
    return goaways, new_connections


def test_matched_policy_idle_connections_get_no_goaway(tmp_path, images, backend):
    flags = ("--grpc-keepalive-permit-without-calls", "true",
             "--grpc-http2-min-recv-ping-interval-without-data", "500")
    with stack(tmp_path, proxies=0, replicas=1, triton_flags=flags, backend=backend,
               **FAST_PINGS) as s:
        goaways, reconnects = _idle_then_call(s, images, idle_s=6)
    assert goaways == 0
    assert reconnects == 0


def test_mismatched_policy_is_caught(tmp_path, images, backend):
    """Triton's defaults refuse pings on idle connections: 1 s pings earn GOAWAY."""
    with stack(tmp_path, proxies=0, replicas=1, triton_flags=(), backend=backend,
               **FAST_PINGS) as s:
        goaways, _ = _idle_then_call(s, images, idle_s=6)
    assert goaways > 0
