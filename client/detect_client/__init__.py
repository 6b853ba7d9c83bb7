"""A slim client for ``detect.v1.Detector``: the generated stubs (package ``detect``), one
helper that makes a well-configured channel, and the ``detect`` command.

    from detect_client import connect
    from detect.v1 import detect_pb2, detect_pb2_grpc

    channel = connect("localhost:8443", ca_file="build/certs/ca.crt")  # once, at start-up
    detector = detect_pb2_grpc.DetectorStub(channel)
    reply = detector.Detect(detect_pb2.DetectRequest(image=data), timeout=2.0)
"""

from detect_client.channel import connect, connect_aio

__all__ = ["connect", "connect_aio"]
__version__ = "0.1.0"
