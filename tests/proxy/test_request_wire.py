"""The image is taken from the wire without copies, and the answer is always protobuf's."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from detect.v1 import detect_pb2
from detect_proxy import request_wire

requests = st.builds(
    detect_pb2.DetectRequest,
    image=st.binary(max_size=300), model=st.text(max_size=20),
    min_score=st.floats(width=32, allow_nan=False), max_detections=st.integers(-2**31, 2**31 - 1))


def _reference(data: bytes):
    """protobuf's own verdict: (request without image, image) or None."""
    try:
        request = detect_pb2.DetectRequest.FromString(data)
    except Exception:
        return None
    image = request.image
    request.ClearField("image")
    return request, image


def _same(data: bytes) -> None:
    ours, reference = request_wire.parse(data), _reference(data)
    if reference is None:
        assert ours is None
        return
    assert ours is not None
    assert ours[0] == reference[0] and bytes(ours[1]) == reference[1]


@settings(max_examples=300, deadline=None)
@given(requests)
def test_valid_requests_match_protobuf(request):
    _same(request.SerializeToString())


@settings(max_examples=300, deadline=None)
@given(st.lists(requests, min_size=2, max_size=3))
def test_concatenated_messages_merge_like_protobuf(parts):
    """A field seen twice: the last image wins, as protobuf's merge says."""
    _same(b"".join(p.SerializeToString() for p in parts))


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_are_judged_like_protobuf(data):
    _same(data)


@settings(max_examples=300, deadline=None)
@given(requests, st.integers(0, 40))
def test_truncated_requests_are_judged_like_protobuf(request, cut):
    data = request.SerializeToString()
    _same(data[: max(0, len(data) - cut)])


def test_the_image_is_a_view_into_the_received_bytes():
    data = detect_pb2.DetectRequest(image=b"\x89PNG" + bytes(100_000),
                                    model="m").SerializeToString()
    request, image = request_wire.parse(data)
    assert isinstance(image, memoryview) and image.obj is data
    assert request.model == "m" and not request.image


def test_unknown_fields_and_bad_utf8_follow_protobuf():
    unknown = (detect_pb2.DetectRequest(image=b"img").SerializeToString()
               + b"\xa0\x06\x07")  # field 100
    _same(unknown)
    bad_model = b"\x12\x02\xff\xfe" + detect_pb2.DetectRequest(image=b"img").SerializeToString()
    assert request_wire.parse(bad_model) is None and _reference(bad_model) is None
