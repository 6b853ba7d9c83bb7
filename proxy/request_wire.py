"""DetectRequest parsed without copying the image out of the received message.

protobuf copies a bytes field when it parses the message and again on every read of the
field: two copies of every image before the proxy has done anything with it. Here the
top-level fields are walked in the wire format; the image stays a view into the received
bytes, and everything else (model, min_score, max_detections, unknown fields) is parsed by
protobuf as a small message of its own, with its usual checks. Anything the walk does not
expect (a truncated field, a group, the image field with another wire type) is left to
protobuf's full parse, so the answer is always protobuf's.
"""

from __future__ import annotations

from detect.v1 import detect_pb2

_IMAGE_FIELD = detect_pb2.DetectRequest.DESCRIPTOR.fields_by_name["image"].number
_LENGTH_DELIMITED = 2


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, next position); IndexError or ValueError when malformed."""
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            raise ValueError("varint too long")


def _split(data: bytes) -> tuple[memoryview, list[tuple[int, int]]] | None:
    """The image as a view and the byte ranges of every other field, or None to fall back."""
    view = memoryview(data)
    image = view[0:0]
    others: list[tuple[int, int]] = []
    pos, end = 0, len(data)
    while pos < end:
        start = pos
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = _varint(data, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == _LENGTH_DELIMITED:
            length, pos = _varint(data, pos)
            if number == _IMAGE_FIELD:
                if pos + length > end:
                    return None
                image = view[pos:pos + length]  # the last occurrence wins, as in protobuf
                pos += length
                continue
            pos += length
        else:
            return None  # groups and invalid wire types: protobuf decides
        if number == _IMAGE_FIELD or number == 0 or pos > end:
            return None
        others.append((start, pos))
    return image, others


def parse(data: bytes) -> tuple[detect_pb2.DetectRequest, bytes | memoryview] | None:
    """(the request without its image, the image), or None if protobuf rejects the bytes."""
    try:
        split = _split(data)
    except (IndexError, ValueError):
        split = None
    try:
        if split is None:
            request = detect_pb2.DetectRequest.FromString(data)
            return request, request.image
        image, others = split
        rest = b"".join(data[a:b] for a, b in others) if others else b""
        return detect_pb2.DetectRequest.FromString(rest), image
    except Exception:  # protobuf's DecodeError, or invalid UTF-8 in a string field
        return None
