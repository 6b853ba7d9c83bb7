"""DetectStream over a sequence of any length, as successive streams ("segments").

A stream is charged by Envoy's rate limits when it starts, for the images it declares in
``x-detect-images``, and may carry no more than it declared; a caller's bucket admits at most
its burst at once. So a long sequence (a video's frames) is sent as streams of ``segment``
images each: the helper reads one segment ahead, declares exactly its size, streams it, and
opens the next stream when every answer of the previous one has arrived. Memory is bounded
by one segment, and answers keep the sequence's order across segments (with ``unordered``,
each segment's answers come as they finish).

Frames are ``(id, image)`` pairs, or bare images whose ids are their positions in the
sequence ("0", "1", ...). The server keeps a window of images in flight and reads the next
only when one is answered, so the sender is paced by the models without any work here.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_client.declare import Metadata, declaring

# Images per stream: well under a caller's burst under `make run` (400), large enough that
# the pause between streams (the window draining, a new stream starting) costs little.
DEFAULT_SEGMENT = 64

Frame = bytes | tuple[str, bytes]
Answer = tuple[str, detect_pb2.DetectResult]


def _numbered(index: int, frame: Frame) -> tuple[str, bytes]:
    return frame if isinstance(frame, tuple) else (str(index), frame)


def _requests(segment: list[tuple[str, bytes]], options: detect_pb2.DetectRequest,
              unordered: bool) -> Iterator[detect_pb2.DetectStreamRequest]:
    """The segment's requests, built as gRPC sends them (``unordered`` is read from the
    first request only)."""
    for position, (frame_id, image) in enumerate(segment):
        request = detect_pb2.DetectRequest()
        request.CopyFrom(options)
        request.image = image
        yield detect_pb2.DetectStreamRequest(id=frame_id, request=request,
                                             unordered=unordered and position == 0)


def _options(segment: int, model: str, min_score: float, max_detections: int,
             skip_cache: bool, model_version: str) -> detect_pb2.DetectRequest:
    if segment < 1:
        raise ValueError(f"segment must be at least 1 image, not {segment}")
    return detect_pb2.DetectRequest(model=model, min_score=min_score,
                                    max_detections=max_detections, skip_cache=skip_cache,
                                    model_version=model_version)


def detect_stream(stub: detect_pb2_grpc.DetectorStub, frames: Iterable[Frame], *,
                  segment: int = DEFAULT_SEGMENT, unordered: bool = False, model: str = "",
                  min_score: float = 0.0, max_detections: int = 0, skip_cache: bool = False,
                  model_version: str = "", timeout: float | None = None,
                  metadata: Metadata = ()) -> Iterator[Answer]:
    """``(id, DetectResult)`` for every frame, over streams of ``segment`` frames each.
    ``timeout`` is the deadline of each segment's stream (``connect``'s channel gives one
    of 10 s by default: size segments to fit it, or pass a longer one). A failed image is
    its result's ``error`` (``error_of``); a ``grpc.RpcError`` means the stream as a whole
    failed, after the answers already yielded. Leaving the loop early cancels the stream."""
    options = _options(segment, model, min_score, max_detections, skip_cache,
                       model_version)
    return _segments(stub, frames, segment, unordered, options, timeout, metadata)


def _segments(stub: detect_pb2_grpc.DetectorStub, frames: Iterable[Frame], size: int,
              unordered: bool, options: detect_pb2.DetectRequest, timeout: float | None,
              metadata: Metadata) -> Iterator[Answer]:
    numbered = itertools.starmap(_numbered, enumerate(frames))
    while segment := list(itertools.islice(numbered, size)):
        answers = stub.DetectStream(_requests(segment, options, unordered), timeout=timeout,
                                    metadata=declaring(len(segment), metadata))
        try:
            for answer in answers:
                yield answer.id, answer.result
        finally:
            answers.cancel()  # the caller left early; a finished call ignores it


def detect_stream_aio(stub: detect_pb2_grpc.DetectorStub,
                      frames: Iterable[Frame] | AsyncIterable[Frame], *,
                      segment: int = DEFAULT_SEGMENT, unordered: bool = False, model: str = "",
                      min_score: float = 0.0, max_detections: int = 0,
                      skip_cache: bool = False, model_version: str = "",
                      timeout: float | None = None,
                      metadata: Metadata = ()) -> AsyncIterator[Answer]:
    """``detect_stream`` on a stub of a ``grpc.aio`` channel (``connect_aio``); ``frames``
    may also be an async iterable (``async for frame_id, result in ...``)."""
    options = _options(segment, model, min_score, max_detections, skip_cache,
                       model_version)
    return _segments_aio(stub, frames, segment, unordered, options, timeout, metadata)


async def _aio_numbered(frames: Iterable[Frame] | AsyncIterable[Frame]
                        ) -> AsyncIterator[tuple[str, bytes]]:
    if isinstance(frames, AsyncIterable):
        index = 0
        async for frame in frames:
            yield _numbered(index, frame)
            index += 1
    else:
        for index, frame in enumerate(frames):
            yield _numbered(index, frame)


async def _take(frames: AsyncIterator[tuple[str, bytes]], count: int
                ) -> list[tuple[str, bytes]]:
    taken: list[tuple[str, bytes]] = []
    while len(taken) < count:
        try:
            taken.append(await anext(frames))
        except StopAsyncIteration:
            break
    return taken


async def _segments_aio(stub: detect_pb2_grpc.DetectorStub,
                        frames: Iterable[Frame] | AsyncIterable[Frame], size: int,
                        unordered: bool, options: detect_pb2.DetectRequest,
                        timeout: float | None, metadata: Metadata) -> AsyncIterator[Answer]:
    numbered = _aio_numbered(frames)
    while segment := await _take(numbered, size):
        call = stub.DetectStream(_requests(segment, options, unordered), timeout=timeout,
                                 metadata=declaring(len(segment), metadata))
        try:
            async for answer in call:
                yield answer.id, answer.result
        finally:
            call.cancel()
