"""Backend down: UNAVAILABLE fast and NOT_SERVING; backend back: SERVING, no proxy restart."""

from __future__ import annotations

import signal
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_stack.servers import free_port, health_status, proxy, triton_server, wait_for

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_outage_and_recovery(tmp_path, images, backend):
    port = free_port()
    request = detect_pb2.DetectRequest(image=images["coffee.png"])
    with triton_server(backend, tmp_path, port=port) as (triton_url, server):
        with proxy(tmp_path, triton_url) as (target, _):
            channel = grpc.insecure_channel(target)
            stub = detect_pb2_grpc.DetectorStub(channel)
            assert stub.Detect(request, timeout=10).model == "face_detector"

            # Watch streams every change of the detector's health.
            seen: list[int] = []
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="detect.v1.Detector"))
            def read() -> None:
                try:
                    for reply in watch:
                        seen.append(reply.status)
                except grpc.RpcError:  # cancelled at the end of the test
                    pass

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            wait_for(lambda: seen == [SERVING], 5)

            server.stop(signal.SIGKILL)
            start = time.monotonic()
            try:
                stub.Detect(request, timeout=10)
                raise AssertionError("Detect succeeded with the backend down")
            except grpc.RpcError as err:
                elapsed = time.monotonic() - start
                assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
                assert "unavailable" in err.details()
            assert elapsed < 1.0
            wait_for(lambda: health_status(target, "detect.v1.Detector") == NOT_SERVING, 3)
            assert health_status(target) == NOT_SERVING
            wait_for(lambda: NOT_SERVING in seen, 2)

            with triton_server(backend, tmp_path, port=port):
                recovered = wait_for(lambda: health_status(target) == SERVING, 5)
                assert recovered < 5
                assert stub.Detect(request, timeout=10).model == "face_detector"
                wait_for(lambda: seen[-1] == SERVING, 2)
            watch.cancel()
            channel.close()
