"""DetectBatch with its images declared: several images, one model, one call.

The server sends the images to the model server as batches and answers each image with its
detections or its own status, so one bad image fails only itself; the whole call fails only
for what concerns all of them (an unknown model, a limit, "try again later").
"""

from __future__ import annotations

from collections.abc import Sequence

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_client.declare import Metadata, declaring


def batch_request(images: Sequence[bytes], *, model: str = "", min_score: float = 0.0,
                  max_detections: int = 0, skip_cache: bool = False, model_version: str = ""
                  ) -> detect_pb2.DetectBatchRequest:
    return detect_pb2.DetectBatchRequest(images=images, model=model, min_score=min_score,
                                         max_detections=max_detections, skip_cache=skip_cache,
                                         model_version=model_version)


def detect_batch(stub: detect_pb2_grpc.DetectorStub, images: Sequence[bytes], *,
                 model: str = "", min_score: float = 0.0, max_detections: int = 0,
                 skip_cache: bool = False, model_version: str = "",
                 timeout: float | None = None,
                 metadata: Metadata = ()) -> detect_pb2.DetectBatchResponse:
    """One DetectBatch call for ``images`` (at most the server's limit, MAX_BATCH_IMAGES by
    default, and in all at most what Envoy's front buffers for one: 64 MiB by default),
    declared in ``x-detect-images``. ``results[i]`` answers ``images[i]``; read it with
    ``error_of``. Raises ``grpc.RpcError`` when the call as a whole fails."""
    reply: detect_pb2.DetectBatchResponse = stub.DetectBatch(
        batch_request(images, model=model, min_score=min_score,
                      max_detections=max_detections, skip_cache=skip_cache,
                      model_version=model_version),
        timeout=timeout, metadata=declaring(len(images), metadata))
    return reply


async def detect_batch_aio(stub: detect_pb2_grpc.DetectorStub, images: Sequence[bytes], *,
                           model: str = "", min_score: float = 0.0, max_detections: int = 0,
                           skip_cache: bool = False, model_version: str = "",
                           timeout: float | None = None,
                           metadata: Metadata = ()) -> detect_pb2.DetectBatchResponse:
    """``detect_batch`` on a stub of a ``grpc.aio`` channel (``connect_aio``)."""
    reply: detect_pb2.DetectBatchResponse = await stub.DetectBatch(
        batch_request(images, model=model, min_score=min_score,
                      max_detections=max_detections, skip_cache=skip_cache,
                      model_version=model_version),
        timeout=timeout, metadata=declaring(len(images), metadata))
    return reply
