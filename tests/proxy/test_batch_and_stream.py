"""DetectBatch and DetectStream against a real proxy in front of each backend: per-image
results and statuses, batches sent as batches, a stream's order, window and limits."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from detect.v1 import detect_pb2
from detect_proxy.contract import DECLARED_IMAGES_HEADER
from detect_stack.servers import triton_client

MODEL = "face_detector"


def declared(count: int) -> list[tuple[str, str]]:
    return [(DECLARED_IMAGES_HEADER, str(count))]


def _backend_stats(triton_url: str) -> tuple[int, int]:
    """(images, ModelInfer requests) the backend has run for the detector."""
    with triton_client(triton_url) as client:
        stats = client.get_inference_statistics(MODEL).model_stats[0]
    return stats.inference_count, stats.inference_stats.success.count


def _unary(detector, image: bytes, **options) -> detect_pb2.DetectResponse | grpc.RpcError:
    try:
        return detector.Detect(detect_pb2.DetectRequest(image=image, **options), timeout=30)
    except grpc.RpcError as err:
        return err


def test_a_batch_of_16_with_one_bad_image_answers_15_and_one_status(detector, images,
                                                                     triton_url):
    names = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg"]
    batch = [images[names[i % len(names)]] for i in range(16)]
    batch[5] = b"GIF89a not an image we take"
    before = _backend_stats(triton_url)
    answer = detector.DetectBatch(detect_pb2.DetectBatchRequest(images=batch, min_score=0.3),
                                  timeout=60, metadata=declared(16))
    after = _backend_stats(triton_url)
    assert len(answer.results) == 16
    failed = [i for i, r in enumerate(answer.results) if r.WhichOneof("outcome") == "error"]
    assert failed == [5]
    bad = _unary(detector, batch[5])
    assert isinstance(bad, grpc.RpcError)
    assert answer.results[5].error.code == bad.code().value[0] == 3  # INVALID_ARGUMENT
    assert answer.results[5].error.message == bad.details()
    for i in (0, 1, 2, 3):  # the same answers as one image at a time
        assert answer.results[i].response == _unary(detector, batch[i], min_score=0.3)
    # Sent as batches (max_batch_size 8): 15 images in 2 requests.
    assert (after[0] - before[0], after[1] - before[1]) == (15, 2)


@pytest.mark.parametrize("request_, metadata, message", [
    (detect_pb2.DetectBatchRequest(), declared(1), "images is empty"),
    (detect_pb2.DetectBatchRequest(images=[b"x"] * 17), declared(17),
     "17 images is more than the limit of 16 per DetectBatch"),
    (detect_pb2.DetectBatchRequest(images=[b"x"] * 2), [], "2 images but x-detect-images "
                                                           "declared 1"),
    (detect_pb2.DetectBatchRequest(images=[b"x"]), declared(0), "must be a positive integer"),
    (detect_pb2.DetectBatchRequest(images=[b"x"], min_score=2), declared(1),
     "min_score must be in [0, 1]"),
])
def test_a_batch_is_refused_whole_with_a_clear_message(detector, request_, metadata, message):
    with pytest.raises(grpc.RpcError) as error:
        detector.DetectBatch(request_, timeout=10, metadata=metadata)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.value.details()


def test_a_batch_for_an_unknown_model_is_not_found(detector, images):
    with pytest.raises(grpc.RpcError) as error:
        detector.DetectBatch(detect_pb2.DetectBatchRequest(images=[images["coffee.png"]],
                                                           model="no_such_model"), timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert "available models" in error.value.details()


def _frames(images, count: int, bad_every: int = 0):
    names = ["astronaut.png", "coffee.png", "chelsea.png"]
    for i in range(count):
        image = images[names[i % len(names)]]
        if bad_every and i % bad_every == bad_every - 1:
            image = b"not an image"
        yield detect_pb2.DetectStreamRequest(
            id=f"frame-{i}", request=detect_pb2.DetectRequest(image=image, min_score=0.3))


def test_a_stream_answers_every_frame_in_order_with_its_own_status(detector, images):
    answers = list(detector.DetectStream(_frames(images, 30, bad_every=7), timeout=60,
                                         metadata=declared(30)))
    assert [a.id for a in answers] == [f"frame-{i}" for i in range(30)]
    for i, a in enumerate(answers):
        if i % 7 == 6:
            assert a.result.error.code == 3 and "not recognised" in a.result.error.message
        else:
            assert a.result.WhichOneof("outcome") == "response"
    unary = {name: _unary(detector, images[name], min_score=0.3)
             for name in ("astronaut.png", "coffee.png", "chelsea.png")}
    assert answers[0].result.response == unary["astronaut.png"]
    assert answers[1].result.response == unary["coffee.png"]
    assert answers[2].result.response == unary["chelsea.png"]


def test_an_unordered_stream_answers_each_frame_once(detector, images):
    frames = list(_frames(images, 20))
    frames[0].unordered = True
    answers = list(detector.DetectStream(iter(frames), timeout=60, metadata=declared(20)))
    assert sorted(a.id for a in answers) == sorted(f.id for f in frames)
    assert all(a.result.WhichOneof("outcome") == "response" for a in answers)


def test_a_stream_over_its_declaration_ends_after_answering_what_it_accepted(detector, images):
    answers = []
    with pytest.raises(grpc.RpcError) as error:
        for answer in detector.DetectStream(_frames(images, 6), timeout=60,
                                            metadata=declared(4)):
            answers.append(answer.id)
    assert answers == [f"frame-{i}" for i in range(4)]
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "more than 4 images" in error.value.details()


def test_a_frame_without_an_id_ends_the_stream(detector, images):
    frames = list(_frames(images, 3))
    frames[1].id = ""
    with pytest.raises(grpc.RpcError) as error:
        list(detector.DetectStream(iter(frames), timeout=30, metadata=declared(3)))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request 2 of the stream has no id" in error.value.details()


def _rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_a_sender_that_never_reads_is_held_back_by_flow_control(detector, images, triton_url,
                                                                 proxy_server):
    """The proxy reads the next frame only when one is answered (window 8): a caller that
    sends as fast as it can, and never reads an answer, gets frames out only at the pace the
    model answers them, and the proxy's memory stays flat."""
    sent = 0
    stop = threading.Event()
    image = images["astronaut.png"]  # 466 KB

    def endless():
        nonlocal sent
        while not stop.is_set():
            sent += 1
            yield detect_pb2.DetectStreamRequest(id=str(sent),
                                                 request=detect_pb2.DetectRequest(image=image))

    pid = proxy_server[1].popen.pid
    before = _backend_stats(triton_url)[0]
    call = detector.DetectStream(endless(), timeout=60, metadata=declared(10_000))
    try:
        time.sleep(1.5)
        rss_early = _rss_mb(pid)
        time.sleep(3.5)
        rss_late, answered, offered = _rss_mb(pid), _backend_stats(triton_url)[0] - before, sent
    finally:
        stop.set()
        call.cancel()
    # Unheld, a loopback sender gets hundreds of 466 KB frames a second out; here it is
    # the answered frames, the window, and what the HTTP/2 windows and buffers hold.
    assert answered > 0
    assert offered - answered <= 8 + 40, (offered, answered)
    assert rss_late - rss_early < 40, (rss_early, rss_late)


def test_cancelling_a_stream_stops_its_backend_work_within_a_second(detector, images,
                                                                    triton_url):
    image = images["phone-12mp.jpg"]  # about 0.2 s of backend CPU each
    frames = (detect_pb2.DetectStreamRequest(id=str(i), request=detect_pb2.DetectRequest(
        image=image)) for i in range(200))
    before = _backend_stats(triton_url)[0]
    call = detector.DetectStream(frames, timeout=120, metadata=declared(200))
    received = 0
    for _ in call:
        received += 1
        if received == 3:
            call.cancel()
            break
    time.sleep(1.0)
    settled = _backend_stats(triton_url)[0]
    time.sleep(1.5)
    assert _backend_stats(triton_url)[0] == settled, "backend work went on after the cancel"
    # What was answered, what was in the window, and nothing after it.
    assert settled - before <= 3 + 8 + 8
