"""All backends down: fast UNAVAILABLE, nobody hangs; back: full recovery within 5 s."""

from __future__ import annotations

import signal
import time

import grpc

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_stack.servers import free_port, localtriton, proxy, triton_server, wait_for
from detect_stack.stack import TRITON_KEEPALIVE_FLAGS, stack


def _timed(stub, request) -> tuple[float, grpc.StatusCode, str]:
    start = time.monotonic()
    try:
        stub.Detect(request, timeout=10)
        return time.monotonic() - start, grpc.StatusCode.OK, ""
    except grpc.RpcError as err:
        return time.monotonic() - start, err.code(), err.details()


def _recover(stub, request, timeout: float = 5.0) -> float:
    return wait_for(lambda: _timed(stub, request)[1] == grpc.StatusCode.OK, timeout, "recovery")


def test_breaker_fails_fast_then_recovers(tmp_path, images):
    port = free_port()
    request = detect_pb2.DetectRequest(image=images["coffee.png"])
    with localtriton(tmp_path, port=port) as (url, backend):
        with proxy(tmp_path, url, "--breaker-failure-threshold", "3",
                   "--breaker-open-ms", "1000") as (target, proc):
            with grpc.insecure_channel(target) as channel:
                stub = detect_pb2_grpc.DetectorStub(channel)
                assert _timed(stub, request)[1] == grpc.StatusCode.OK
                backend.stop(signal.SIGKILL)
                results = [_timed(stub, request) for _ in range(12)]
                assert all(code == grpc.StatusCode.UNAVAILABLE for _, code, _ in results)
                fast = [(t, d) for t, _, d in results if "circuit breaker open" in d]
                assert len(fast) >= 6, results
                assert max(t for t, _ in fast) < 0.1, fast
                with localtriton(tmp_path, port=port):
                    assert _recover(stub, request) < 5
            assert "circuit breaker CLOSED -> OPEN" in proc.log()
            assert "-> CLOSED" in proc.log()


def test_whole_stack_all_replicas_down_and_back(tmp_path, images, backend):
    request = detect_pb2.DetectRequest(image=images["coffee.png"])
    with stack(tmp_path, backend=backend) as s:
        ports = [int(url.rsplit(":", 1)[1]) for url, _ in s.tritons]
        with s.envoy.channel() as channel:
            stub = detect_pb2_grpc.DetectorStub(channel)
            assert _timed(stub, request)[1] == grpc.StatusCode.OK
            for _, replica in s.tritons:
                replica.stop(signal.SIGKILL)
            time.sleep(2.5)  # health checks notice
            results = [_timed(stub, request) for _ in range(10)]
            assert all(code == grpc.StatusCode.UNAVAILABLE for _, code, _ in results), results
            assert max(t for t, _, _ in results) < 0.1, results
            with triton_server(backend, tmp_path, *TRITON_KEEPALIVE_FLAGS, port=ports[0]), \
                    triton_server(backend, tmp_path, *TRITON_KEEPALIVE_FLAGS, port=ports[1]):
                assert _recover(stub, request) < 5
