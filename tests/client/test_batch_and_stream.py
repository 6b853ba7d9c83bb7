"""detect_client's DetectBatch and DetectStream helpers against a real proxy in front of each
backend: images declared in x-detect-images (the proxy refuses undeclared ones), one result
per image in order, long sequences as streams of a segment each, the asyncio twins."""

from __future__ import annotations

import asyncio
import io

import grpc
import pytest
from PIL import Image

from detect.v1 import detect_pb2
from detect_client import (
    DECLARED_IMAGES_HEADER,
    MAX_BATCH_IMAGES,
    detect_batch,
    detect_batch_aio,
    detect_stream,
    detect_stream_aio,
    error_of,
)
from detect_proxy import contract
from detect_proxy.config import ProxyConfig

FRAMES = 40


def test_the_header_and_the_batch_limit_are_the_proxys():
    """The client spells the contract without importing the server: they must agree."""
    assert DECLARED_IMAGES_HEADER == contract.DECLARED_IMAGES_HEADER
    assert MAX_BATCH_IMAGES == ProxyConfig().max_batch_images


@pytest.fixture(scope="module")
def frames(images) -> list[bytes]:
    """Distinct PNGs of the astronaut (one face) at growing sizes: no two share a cache
    entry, and each is cheap for the model."""
    with Image.open(io.BytesIO(images["astronaut.png"])) as astronaut:
        astronaut.load()
        out = []
        for i in range(FRAMES):
            buffer = io.BytesIO()
            side = 160 + 4 * i
            astronaut.resize((side, side)).save(buffer, "PNG")
            out.append(buffer.getvalue())
    return out


def test_a_batch_of_16_with_one_bad_image_answers_15_and_one_status(detector, frames):
    batch = frames[:16]
    batch[9] = b"GIF89a not an image the service takes"
    reply = detect_batch(detector, batch, min_score=0.3, timeout=30)  # 16 declared
    assert len(reply.results) == 16
    failed = {i: error_of(r) for i, r in enumerate(reply.results) if error_of(r)}
    assert list(failed) == [9]
    code, message = failed[9]
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message
    for i, result in enumerate(reply.results):
        if i != 9:  # in request order: each answer has its own image's size
            assert result.response.image_width == 160 + 4 * i
            assert [d.label for d in result.response.detections] == ["face"]


def test_a_caller_cannot_under_declare_a_batch(detector, frames):
    """The helper's declaration wins over one passed in the metadata."""
    reply = detect_batch(detector, frames[:3], timeout=30,
                         metadata=[(DECLARED_IMAGES_HEADER, "1"), ("x-request-id", "batch-3")])
    assert [error_of(r) for r in reply.results] == [None] * 3


def test_a_stream_in_segments_answers_every_frame_once_in_order_as_detect_does(detector,
                                                                               frames):
    answers = list(detect_stream(detector, frames, segment=16, min_score=0.3, timeout=30))
    assert [frame_id for frame_id, _ in answers] == [str(i) for i in range(FRAMES)]
    for (_, result), image in zip(answers, frames, strict=True):
        unary = detector.Detect(detect_pb2.DetectRequest(image=image, min_score=0.3,
                                                         skip_cache=True), timeout=30)
        assert result.response == unary


def test_the_asyncio_twins(proxy_target, frames):
    async def frames_coming():  # e.g. from a camera: an async source, ids of the caller's
        for i, image in enumerate(frames[:20]):
            yield f"frame-{i}", image

    async def run():
        async with grpc.aio.insecure_channel(proxy_target) as channel:
            from detect.v1 import detect_pb2_grpc

            stub = detect_pb2_grpc.DetectorStub(channel)
            batch = await detect_batch_aio(stub, frames[:5], timeout=30)
            streamed = [answer async for answer in detect_stream_aio(
                stub, frames_coming(), segment=8, unordered=True, timeout=30)]
        return batch, streamed

    batch, streamed = asyncio.run(run())
    assert [r.response.image_width for r in batch.results] == [160 + 4 * i for i in range(5)]
    assert sorted(frame_id for frame_id, _ in streamed) == sorted(
        f"frame-{i}" for i in range(20))
    assert all(result.response.detections for _, result in streamed)
