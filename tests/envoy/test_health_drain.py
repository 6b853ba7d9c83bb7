"""Taking an Envoy out of a load balancer's rotation: `POST /healthcheck/fail` on its admin
makes gRPC health Checks through the front fail (UNAVAILABLE, from Envoy itself) while Detect
calls are still served; `POST /healthcheck/ok` puts it back."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_client.channel import connect
from detect_envoy.listeners import DRAINING_MESSAGE
from detect_proxy.contract import SERVICE
from detect_stack.servers import ROOT
from detect_stack.stack import admin_get, admin_post

SERVING = health_pb2.HealthCheckResponse.SERVING


def _check(channel: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def _egress_connections(edge) -> int:
    """Connections the proxies have opened to the Triton egress listener so far."""
    name = f"listener.127.0.0.1_{edge.envoy.egress_port}.downstream_cx_total"
    for line in admin_get(edge.envoy.admin_port, f"/stats?filter=^{name}$").splitlines():
        return int(line.split(":")[1])
    raise AssertionError(f"no stat {name}")


@pytest.fixture()
def failing(edge):
    """The edge Envoy failing its health checks for the test, healthy again after it."""
    admin_post(edge.envoy.admin_port, "/healthcheck/fail")
    try:
        yield edge
    finally:
        admin_post(edge.envoy.admin_port, "/healthcheck/ok")


def test_health_follows_the_proxies_while_envoy_is_healthy(edge):
    with edge.envoy.channel() as channel:
        assert _check(channel, "") == SERVING
        assert _check(channel, SERVICE) == SERVING


def test_failing_envoy_answers_health_unavailable_and_still_serves(failing):
    image = (ROOT / "build/testdata/astronaut.png").read_bytes()
    egress_before = _egress_connections(failing)
    with failing.envoy.channel() as channel:
        for service in ("", SERVICE):
            with pytest.raises(grpc.RpcError) as err:
                _check(channel, service)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert err.value.details() == DRAINING_MESSAGE
            assert ("x-envoy-immediate-health-check-fail", "true") in \
                err.value.trailing_metadata()
    # Draining, not refusing: calls still sent here are served, one after the other and
    # concurrently (Envoy closes each caller connection gracefully after its call, and the
    # client reconnects; a call caught by that GOAWAY is UNAVAILABLE, which the project's
    # client retries, as callers should).
    with connect(failing.envoy.front, ca_file=failing.envoy.certs / "ca.crt") as channel:
        stub = detect_pb2_grpc.DetectorStub(channel)
        request = detect_pb2.DetectRequest(image=image)
        for _ in range(5):
            assert len(stub.Detect(request, timeout=30).detections) == 1
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: stub.Detect(request, timeout=30), range(16)))
        assert all(len(a.detections) == 1 for a in answers)
    # The proxies' pooled connections to Triton are not drained with the callers.
    assert _egress_connections(failing) == egress_before


def test_healthcheck_ok_restores_serving(failing):
    with failing.envoy.channel() as channel:
        with pytest.raises(grpc.RpcError):
            _check(channel, SERVICE)
        admin_post(failing.envoy.admin_port, "/healthcheck/ok")
        assert _check(channel, SERVICE) == SERVING
        assert _check(channel, "") == SERVING
