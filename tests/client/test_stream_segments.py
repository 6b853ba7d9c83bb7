"""How detect_stream splits a sequence: against a recording Detector, each segment is its
own stream declaring exactly the frames it carries, ids run on across segments, `unordered`
rides on each stream's first request, and a caller leaving early cancels the stream."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_client import DECLARED_IMAGES_HEADER, connect, detect_stream
from detect_stack.servers import free_port


class Recording(detect_pb2_grpc.DetectorServicer):
    """Answers every frame with its image's length as its width; remembers each stream."""

    def __init__(self) -> None:
        super().__init__()
        self.streams: list[tuple[dict[str, str], list[detect_pb2.DetectStreamRequest]]] = []
        self.ended = threading.Event()
        self.delay_s = 0.0
        self.answered = 0

    def DetectStream(self, request_iterator, context):
        context.add_callback(self.ended.set)
        received: list[detect_pb2.DetectStreamRequest] = []
        self.streams.append((dict(context.invocation_metadata()), received))
        for request in request_iterator:
            received.append(request)
            time.sleep(self.delay_s)
            self.answered += 1
            yield detect_pb2.DetectStreamResponse(id=request.id, result=detect_pb2.DetectResult(
                response=detect_pb2.DetectResponse(image_width=len(request.request.image))))


@pytest.fixture
def recording():
    servicer = Recording()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    detect_pb2_grpc.add_DetectorServicer_to_server(servicer, server)
    target = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(target)
    server.start()
    with connect(target, plaintext=True) as channel:
        yield servicer, detect_pb2_grpc.DetectorStub(channel)
    server.stop(0)


def test_each_segment_is_a_stream_declaring_its_frames(recording):
    servicer, stub = recording
    images = [b"x" * (i + 1) for i in range(40)]
    answers = list(detect_stream(stub, images, segment=16, unordered=True, model="m",
                                 min_score=0.5, metadata=[(DECLARED_IMAGES_HEADER, "1000"),
                                                          ("x-client-id", "alpha")]))
    assert [frame_id for frame_id, _ in answers] == [str(i) for i in range(40)]
    assert [r.response.image_width for _, r in answers] == list(range(1, 41))
    assert [len(frames) for _, frames in servicer.streams] == [16, 16, 8]
    for metadata, frames in servicer.streams:
        assert metadata[DECLARED_IMAGES_HEADER] == str(len(frames))  # the caller's is replaced
        assert metadata["x-client-id"] == "alpha"
        assert [f.unordered for f in frames] == [True] + [False] * (len(frames) - 1)
        assert {(f.request.model, f.request.min_score) for f in frames} == {("m", 0.5)}


def test_frames_may_carry_their_own_ids(recording):
    servicer, stub = recording
    frames = [(f"cam1/{i:04d}", b"x") for i in range(5)]
    assert [frame_id for frame_id, _ in detect_stream(stub, frames, segment=2)] == [
        frame_id for frame_id, _ in frames]
    assert [metadata[DECLARED_IMAGES_HEADER] for metadata, _ in servicer.streams] == [
        "2", "2", "1"]


def test_nothing_to_send_opens_no_stream_and_a_bad_segment_fails_at_once(recording):
    servicer, stub = recording
    assert list(detect_stream(stub, [])) == []
    assert servicer.streams == []
    with pytest.raises(ValueError, match="segment must be at least 1"):
        detect_stream(stub, [b"x"], segment=0)


def test_leaving_early_cancels_the_stream(recording):
    servicer, stub = recording
    servicer.delay_s = 0.02  # 500 answers would take 10 s
    answers = detect_stream(stub, (b"x" for _ in range(1000)), segment=500)
    assert next(answers)[0] == "0"
    answers.close()
    assert servicer.ended.wait(5)
    time.sleep(0.1)
    assert len(servicer.streams) == 1 and servicer.answered < 100
