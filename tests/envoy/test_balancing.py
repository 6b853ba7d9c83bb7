"""Traffic reaches every proxy process and every Triton replica; failures stay invisible."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_stack.servers import health_status
from detect_stack.stack import host_counter, stack

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _inferences(url: str) -> int:
    with grpcclient.InferenceServerClient(url) as client:
        return client.get_inference_statistics("face_detector").model_stats[0].inference_count


def test_every_proxy_and_replica_gets_traffic_over_one_client_connection(edge, images):
    before_proxies = host_counter(edge.envoy.admin_port, "detect_proxy")
    before_tritons = {url: _inferences(url) for url, _ in edge.tritons}
    with edge.envoy.channel() as channel:  # a single HTTP/2 connection from the caller
        stub = detect_pb2_grpc.DetectorStub(channel)
        request = detect_pb2.DetectRequest(image=images["coffee.png"])
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda _: stub.Detect(request, timeout=30), range(48)))
    assert len(results) == 48
    after_proxies = host_counter(edge.envoy.admin_port, "detect_proxy")
    per_proxy = {h: after_proxies[h] - before_proxies.get(h, 0) for h in after_proxies}
    assert len(per_proxy) == 2 and all(n > 0 for n in per_proxy.values()), per_proxy
    per_triton = {url: _inferences(url) - before_tritons[url] for url, _ in edge.tritons}
    assert all(n > 0 for n in per_triton.values()), per_triton
    assert sum(per_triton.values()) == 48


def _load(target_channel, request, calls: int, workers: int, timeout_s: float = 60):
    stub = detect_pb2_grpc.DetectorStub(target_channel)
    failures: list[str] = []

    def one(_):
        try:
            stub.Detect(request, timeout=timeout_s)
        except grpc.RpcError as err:
            failures.append(f"{err.code().name}: {err.details()}")

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(calls)))
    return failures




def test_kill_9_of_a_replica_under_300_concurrent_calls(tmp_path, images, backend):
    # 300 callers that can all wait (120 s deadlines, let through by Envoy as they are): the
    # proxies queue them rather than refuse (least-request can give one proxy more than its
    # default 256 in flight), even at half the capacity after the kill on a slow machine (a
    # queued call may spend half of its deadline waiting), so every outcome is the kill's doing.
    with stack(tmp_path, backend=backend, max_grpc_timeout_s=120.0,
               proxy_flags=("--max-queue-wait-ms", "60000", "--max-in-flight", "1024")) as s:
        request = detect_pb2.DetectRequest(image=images["coffee.png"])
        with s.envoy.channel() as channel:
            killer = threading.Timer(1.5, lambda: s.tritons[0][1].stop(signal.SIGKILL))
            killer.start()
            start = time.monotonic()
            failures = _load(channel, request, calls=300, workers=300, timeout_s=120)
            killer.join()
        assert s.tritons[0][1].popen.returncode == -signal.SIGKILL
        assert time.monotonic() - start > 1.5, "the load finished before the kill"
        assert failures == []


def test_draining_a_proxy_fails_no_call(tmp_path, images):
    with stack(tmp_path) as s:
        request = detect_pb2.DetectRequest(image=images["coffee.png"])
        draining = s.proxies[0][1]
        with s.envoy.channel() as channel:
            timer = threading.Timer(1.0, lambda: draining.popen.send_signal(signal.SIGTERM))
            timer.start()
            failures = _load(channel, request, calls=200, workers=32)
            timer.join()
        assert draining.popen.wait(30) == 0
        assert failures == []
        assert "NOT_SERVING" in draining.log()


def test_operator_drain_and_resume_through_health(tmp_path, images):
    with stack(tmp_path) as s:
        request = detect_pb2.DetectRequest(image=images["coffee.png"])
        target, drained = s.proxies[0]
        host = target
        admin = s.envoy.admin_port
        drained.popen.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while health_status(target) != NOT_SERVING:
            assert time.monotonic() < deadline, "proxy did not report the drain"
            time.sleep(0.05)
        # Envoy's next health check (every second) sees it; give it two.
        time.sleep(2.2)
        assert "failed_active_hc" in _health_flags(admin, host)
        before = host_counter(admin, "detect_proxy")[host]
        with s.envoy.channel() as channel:
            assert _load(channel, request, calls=40, workers=8) == []
        assert host_counter(admin, "detect_proxy")[host] == before, "drained proxy got calls"
        drained.popen.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 5
        while "failed_active_hc" in _health_flags(admin, host):
            assert time.monotonic() < deadline, "proxy did not come back"
            time.sleep(0.05)
        with s.envoy.channel() as channel:
            assert _load(channel, request, calls=40, workers=8) == []
        assert host_counter(admin, "detect_proxy")[host] > before
        assert "drained by the operator" in drained.log()


def _health_flags(admin_port: int, host: str) -> str:
    from detect_stack.stack import admin_get

    for line in admin_get(admin_port, "/clusters").splitlines():
        if line.startswith(f"detect_proxy::{host}::health_flags::"):
            return line.rsplit("::", 1)[1]
    return ""
