"""detect_client.connect: retries of "try again later" codes and a default deadline, done by
gRPC itself from the channel's service config, against a real gRPC server."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_client import connect
from detect_stack.servers import free_port


class Scripted(detect_pb2_grpc.DetectorServicer):
    """A Detector answering each call with the next scripted status (OK when none is left)."""

    def __init__(self, statuses: list[grpc.StatusCode], delay_s: float = 0.0) -> None:
        super().__init__()
        self.statuses = list(statuses)
        self.delay_s = delay_s
        self.calls = 0
        self.lock = threading.Lock()

    def Detect(self, request, context):
        with self.lock:
            self.calls += 1
            status = self.statuses.pop(0) if self.statuses else grpc.StatusCode.OK
        time.sleep(self.delay_s)
        if status != grpc.StatusCode.OK:
            context.abort(status, "scripted")
        return detect_pb2.DetectResponse(model="scripted")


@pytest.fixture
def serve():
    servers = []

    def start(servicer: Scripted) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(4))
        detect_pb2_grpc.add_DetectorServicer_to_server(servicer, server)
        target = f"127.0.0.1:{free_port()}"
        server.add_insecure_port(target)
        server.start()
        servers.append(server)
        return target

    yield start
    for server in servers:
        server.stop(0)


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE,
                                  grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_try_again_later_codes_are_retried(serve, code):
    servicer = Scripted([code, code])
    with connect(serve(servicer), plaintext=True) as channel:
        reply = detect_pb2_grpc.DetectorStub(channel).Detect(detect_pb2.DetectRequest())
    assert reply.model == "scripted" and servicer.calls == 3


def test_attempts_are_bounded_and_other_codes_are_not_retried(serve):
    servicer = Scripted([grpc.StatusCode.UNAVAILABLE] * 5)
    with connect(serve(servicer), plaintext=True) as channel:
        with pytest.raises(grpc.RpcError) as err:
            detect_pb2_grpc.DetectorStub(channel).Detect(detect_pb2.DetectRequest())
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and servicer.calls == 3
    invalid = Scripted([grpc.StatusCode.INVALID_ARGUMENT])
    with connect(serve(invalid), plaintext=True) as channel:
        with pytest.raises(grpc.RpcError) as err:
            detect_pb2_grpc.DetectorStub(channel).Detect(detect_pb2.DetectRequest())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and invalid.calls == 1


def test_a_call_without_a_deadline_gets_the_default_one(serve):
    servicer = Scripted([], delay_s=2.0)
    with connect(serve(servicer), plaintext=True, timeout_s=0.3) as channel:
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            detect_pb2_grpc.DetectorStub(channel).Detect(detect_pb2.DetectRequest())
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 1.5


def test_mtls_needs_both_certificate_and_key(tmp_path):
    cert = tmp_path / "client.crt"
    cert.write_text("not used")
    with pytest.raises(ValueError, match="both a client certificate and its key"):
        connect("localhost:8443", cert_file=cert)
