"""TLS at the front door; plaintext refused."""

from __future__ import annotations

import grpc
import pytest

from detect.v1 import detect_pb2, detect_pb2_grpc


def test_detect_over_tls_with_the_ca(edge, images):
    with edge.envoy.channel() as channel:
        response = detect_pb2_grpc.DetectorStub(channel).Detect(
            detect_pb2.DetectRequest(image=images["astronaut.png"]), timeout=10)
    assert len(response.detections) == 1 and response.detections[0].label == "face"


def test_plaintext_is_refused(edge, images):
    with edge.envoy.channel(ca=False) as channel:
        with pytest.raises(grpc.RpcError) as err:
            detect_pb2_grpc.DetectorStub(channel).Detect(
                detect_pb2.DetectRequest(image=images["astronaut.png"]), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_request_size_limit_at_the_front_door(edge):
    from detect_stack.stack import host_counter

    before = sum(host_counter(edge.envoy.admin_port, "detect_proxy").values())
    with edge.envoy.channel() as channel:
        with pytest.raises(grpc.RpcError) as err:
            detect_pb2_grpc.DetectorStub(channel).Detect(
                detect_pb2.DetectRequest(image=b"\x89PNG" + b"\x00" * (10 << 20)), timeout=10)
    # Envoy's own 413, answered as the proxy would (tests/envoy/test_oversized_images.py).
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sum(host_counter(edge.envoy.admin_port, "detect_proxy").values()) == before
