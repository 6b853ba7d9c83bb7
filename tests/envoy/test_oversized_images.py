"""An image over the byte limit is INVALID_ARGUMENT naming the limit, at every size, straight
to a proxy and through Envoy: never RESOURCE_EXHAUSTED (which says "retry later") from
gRPC's own message limit, never UNKNOWN "Payload Too Large" from Envoy's."""

from __future__ import annotations

import grpc
import pytest

from detect.v1 import detect_pb2, detect_pb2_grpc

EIGHT_MIB = 8 * 1024 * 1024
SIZES = {"8 MiB + 1": EIGHT_MIB + 1, "9 MB": 9_000_000, "20 MB": 20_000_000,
         "64 MB": 64_000_000}
PNG = b"\x89PNG\r\n\x1a\n"


def _refusal(channel: grpc.Channel, size: int) -> grpc.RpcError:
    stub = detect_pb2_grpc.DetectorStub(channel)
    request = detect_pb2.DetectRequest(image=PNG + b"\x00" * (size - len(PNG)))
    with pytest.raises(grpc.RpcError) as err:
        stub.Detect(request, timeout=60)
    return err.value


@pytest.mark.parametrize("name", list(SIZES))
def test_straight_to_a_proxy(edge, name):
    target, _ = edge.proxies[0]
    with grpc.insecure_channel(target) as channel:
        error = _refusal(channel, SIZES[name])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details() == (f"image is {SIZES[name]} bytes; the limit is {EIGHT_MIB} bytes")


@pytest.mark.parametrize("name", list(SIZES))
def test_through_envoy(edge, images, name):
    with edge.envoy.channel() as channel:
        error = _refusal(channel, SIZES[name])
        # The connection and the proxies keep serving.
        answer = detect_pb2_grpc.DetectorStub(channel).Detect(
            detect_pb2.DetectRequest(image=images["astronaut.png"]), timeout=30)
    assert len(answer.detections) == 1
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "the limit is" in error.details() or "larger than the limit of" in error.details()
    # Envoy's limit leaves room for the proxy's: whatever it forwards, the proxy judges.
    if SIZES[name] < 9 * 1024 * 1024 - 1024:
        assert error.details() == f"image is {SIZES[name]} bytes; the limit is {EIGHT_MIB} bytes"
    else:
        assert error.details() == ("request is larger than the limit of 9437184 bytes "
                                   "(67108864 for DetectBatch); send a smaller image, or fewer "
                                   "images per batch")
