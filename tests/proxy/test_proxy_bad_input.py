"""The bad-input battery through the proxy: each case its own code and message."""

from __future__ import annotations

import math
import struct
import zlib

import grpc
import pytest

from detect.v1 import detect_pb2

EIGHT_MIB = 8 * 1024 * 1024


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))


def _fails(detector, request: detect_pb2.DetectRequest, code: grpc.StatusCode, *fragments: str):
    with pytest.raises(grpc.RpcError) as err:
        detector.Detect(request, timeout=10)
    assert err.value.code() == code, err.value.details()
    for fragment in fragments:
        assert fragment in err.value.details()
    return err.value.details()


CASES = {
    "empty": (dict(image=b""), grpc.StatusCode.INVALID_ARGUMENT, ["image is empty"]),
    "unknown format": (dict(image=b"GIF89a" + b"\x00" * 20), grpc.StatusCode.INVALID_ARGUMENT,
                       ["not recognised", "JPEG, PNG, WebP or BMP"]),
    "too many pixels": (dict(image=_png_header(8000, 6000)), grpc.StatusCode.INVALID_ARGUMENT,
                        ["image is 8000x6000; the limit is 4096x4096"]),
    "one byte over": (dict(image=_png_header(10, 10) + b"\x00" * (EIGHT_MIB + 1 - 33)),
                      grpc.StatusCode.INVALID_ARGUMENT,
                      [f"image is {EIGHT_MIB + 1} bytes; the limit is {EIGHT_MIB} bytes"]),
    "far over": (dict(image=b"\x00" * (EIGHT_MIB + 1024 * 1024)),
                 grpc.StatusCode.INVALID_ARGUMENT,
                 [f"image is {EIGHT_MIB + 1024 * 1024} bytes; the limit is {EIGHT_MIB} bytes"]),
    "score nan": (dict(image=b"x", min_score=math.nan), grpc.StatusCode.INVALID_ARGUMENT,
                  ["min_score must be in [0, 1], got nan"]),
    "score above 1": (dict(image=b"x", min_score=1.5), grpc.StatusCode.INVALID_ARGUMENT,
                      ["min_score must be in [0, 1], got 1.5"]),
    "score negative": (dict(image=b"x", min_score=-0.25), grpc.StatusCode.INVALID_ARGUMENT,
                       ["min_score"]),
    "max detections negative": (dict(image=b"x", max_detections=-1),
                                grpc.StatusCode.INVALID_ARGUMENT, ["max_detections must be >= 0"]),
    "unknown model": (dict(image=_png_header(10, 10), model="cat_detector"),
                      grpc.StatusCode.NOT_FOUND,
                      ["model 'cat_detector' is not served; "
                       "available models: face_detector, null_detector"]),
    "pipeline step": (dict(image=_png_header(10, 10), model="centerface"),
                      grpc.StatusCode.NOT_FOUND,
                      ["model 'centerface' is not served; "
                       "available models: face_detector, null_detector"]),
    "corrupt body": (dict(image=_png_header(64, 64) + b"\x00\x00\x00\x10IDATgarbage"),
                     grpc.StatusCode.INVALID_ARGUMENT,
                     ["model 'face_detector' rejected the image: image 0 could not be decoded"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(detector, name):
    fields, code, fragments = CASES[name]
    _fails(detector, detect_pb2.DetectRequest(**fields), code, *fragments)


def test_truncated_png_rejected_by_the_backend(detector, images):
    data = images["astronaut.png"]
    _fails(detector, detect_pb2.DetectRequest(image=data[: len(data) // 3]),
           grpc.StatusCode.INVALID_ARGUMENT, "rejected the image", "truncated")


def test_proxy_keeps_serving_after_the_battery(detector, images):
    for name in CASES:
        fields, code, _ = CASES[name]
        with pytest.raises(grpc.RpcError):
            detector.Detect(detect_pb2.DetectRequest(**fields), timeout=10)
    response = detector.Detect(detect_pb2.DetectRequest(image=images["astronaut.png"]), timeout=10)
    assert len(response.detections) == 1


def test_garbage_protobuf_is_invalid_argument(proxy_target):
    """Bytes that are not a DetectRequest never reach the handler."""
    with grpc.insecure_channel(proxy_target) as channel:
        call = channel.unary_unary("/detect.v1.Detector/Detect",
                                   request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as err:
            call(b"\xff\xff\xff\xff\x0f garbage", timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == "request body is not a valid detect.v1.DetectRequest"
