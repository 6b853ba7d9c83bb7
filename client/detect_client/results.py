"""One image's outcome in DetectBatch and DetectStream: detections, or a google.rpc.Status.

The status carries the numeric gRPC code Detect would have failed that image with; callers
branch on ``grpc.StatusCode`` everywhere else, so it is turned into one here.
"""

from __future__ import annotations

import grpc

from detect.v1 import detect_pb2

_CODES: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


def status_code(number: int) -> grpc.StatusCode:
    """The ``grpc.StatusCode`` of a google.rpc.Status code (UNKNOWN for a number gRPC does
    not define, as gRPC itself maps it)."""
    return _CODES.get(number, grpc.StatusCode.UNKNOWN)


def error_of(result: detect_pb2.DetectResult) -> tuple[grpc.StatusCode, str] | None:
    """(code, message) when the image failed; None when ``result.response`` holds its
    detections."""
    if result.WhichOneof("outcome") != "error":
        return None
    return status_code(result.error.code), result.error.message
