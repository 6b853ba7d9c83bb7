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
