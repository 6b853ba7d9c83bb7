"""A slim client for ``detect.v1.Detector``: the generated stubs (package ``detect``), one
helper that makes a well-configured channel, helpers for DetectBatch and DetectStream that
declare the images they carry, and the ``detect`` command.

    from detect_client import connect, detect_batch, detect_stream, error_of
    from detect.v1 import detect_pb2, detect_pb2_grpc

    channel = connect("localhost:8443", ca_file="build/certs/ca.crt")  # once, at start-up
    detector = detect_pb2_grpc.DetectorStub(channel)
    reply = detector.Detect(detect_pb2.DetectRequest(image=data), timeout=2.0)
    batch = detect_batch(detector, [data, other], timeout=5.0)  # batch.results[i]: images[i]
    for frame_id, result in detect_stream(detector, frames):  # (id, image) pairs, any number
        ...
"""

from detect_client.batch import detect_batch, detect_batch_aio
from detect_client.channel import connect, connect_aio
from detect_client.declare import DECLARED_IMAGES_HEADER, MAX_BATCH_IMAGES
from detect_client.results import error_of, status_code
from detect_client.stream import DEFAULT_SEGMENT, detect_stream, detect_stream_aio

__all__ = ["DECLARED_IMAGES_HEADER", "DEFAULT_SEGMENT", "MAX_BATCH_IMAGES", "connect",
           "connect_aio", "detect_batch", "detect_batch_aio", "detect_stream",
           "detect_stream_aio", "error_of", "status_code"]
__version__ = "0.1.0"
