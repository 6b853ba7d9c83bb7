"""The proxy's Prometheus metrics move exactly as calls are made."""

from __future__ import annotations

import grpc
import pytest

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_stack.promtext import scrape, value
from detect_stack.servers import free_port, proxy


def test_counts_by_code(tmp_path, triton_url, images):
    metrics_port = free_port()
    with proxy(tmp_path, triton_url, metrics_port=metrics_port) as (target, _):
        with grpc.insecure_channel(target) as channel:
            stub = detect_pb2_grpc.DetectorStub(channel)
            for _ in range(3):
                stub.Detect(detect_pb2.DetectRequest(image=images["coffee.png"]), timeout=10)
            for bad in (b"", b"nope"):
                with pytest.raises(grpc.RpcError):
                    stub.Detect(detect_pb2.DetectRequest(image=bad), timeout=10)
        samples = scrape(metrics_port)
    calls = "rpc_server_duration_milliseconds_count"
    assert value(samples, calls, rpc_grpc_status_code="0", status="OK", rpc_method="Detect",
                 model="face_detector") == 3
    assert value(samples, calls, rpc_grpc_status_code="3", status="INVALID_ARGUMENT") == 2
    assert value(samples, "detect_upstream_duration_milliseconds_count", status="OK") == 3
    assert value(samples, "detect_upstream_batch_size_count", model="face_detector") == 3
    assert value(samples, "detect_pool_channel_state", state="READY") == 2
    assert value(samples, "detect_health_serving") == 1
    assert value(samples, "detect_rejected_total", reason="invalid_image") == 2
    assert value(samples, "detect_image_size_bytes_count") == 5
    assert value(samples, "detect_in_flight") == 0
