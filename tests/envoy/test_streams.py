"""DetectStream and DetectBatch through Envoy's TLS front: long streams pass unbuffered,
and rate limits count the images a call declares."""

from __future__ import annotations

import io
import threading
import time

import grpc
import pytest
from PIL import Image

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_proxy.contract import DECLARED_IMAGES_HEADER
from detect_stack.servers import proxy
from detect_stack.stack import envoy

FRAMES = 1000


def _frame(i: int) -> bytes:
    """A small PNG unlike any other frame (the pixel values encode its number)."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (i % 256, i // 256, 7)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_stream_of_1000_frames_through_tls_answers_each_id(edge):
    frames = [_frame(i) for i in range(FRAMES)]
    requests = (detect_pb2.DetectStreamRequest(
        id=f"f{i}", request=detect_pb2.DetectRequest(image=frame, model="null_detector"))
        for i, frame in enumerate(frames))
    with edge.envoy.channel() as channel:
        answers = list(detect_pb2_grpc.DetectorStub(channel).DetectStream(
            requests, timeout=120, metadata=[(DECLARED_IMAGES_HEADER, str(FRAMES))]))
    assert [a.id for a in answers] == [f"f{i}" for i in range(FRAMES)]
    for a in answers:
        response = a.result.response
        assert response.model == "null_detector"
        assert (response.image_width, response.image_height) == (64, 48)
        assert len(response.detections) == 1


def test_a_stream_ends_at_its_maximum_duration_with_a_clear_status(tmp_path, edge):
    """The proxy ends a stream at --stream-max-duration-s, after answering what it accepted,
    before Envoy's own maximum (a backstop that can only reset the stream)."""
    tritons = [url for url, _ in edge.tritons]
    with proxy(tmp_path, f"127.0.0.1:{edge.envoy.egress_port}",
               "--stream-max-duration-s", "1") as (target, _), \
            envoy(tmp_path, edge.envoy.certs, [target], tritons) as e, e.channel() as channel:
        stub = detect_pb2_grpc.DetectorStub(channel)
        idle = threading.Event()

        def quiet():  # one frame, then nothing, without closing the stream
            yield detect_pb2.DetectStreamRequest(id="1", request=detect_pb2.DetectRequest(
                image=_frame(1), model="null_detector"))
            idle.wait(10)

        answers = []
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as error:
            for answer in stub.DetectStream(quiet(), timeout=30,
                                            metadata=[(DECLARED_IMAGES_HEADER, "2")]):
                answers.append(answer.id)
        idle.set()
    assert answers == ["1"]
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error.value.details() == ("the stream reached its maximum duration of 1s; "
                                     "open a new one")
    assert 0.9 < time.monotonic() - started < 5
