"""The proxy can listen on a Unix socket, so that only a co-located Envoy can reach it."""

from __future__ import annotations

import sys

import grpc

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_stack.servers import running, serving


def test_detect_over_a_unix_socket(tmp_path, triton_url, images):
    target = f"unix:{tmp_path}/proxy.sock"
    args = [sys.executable, "-m", "detect_proxy", "--listen", target, "--triton-url", triton_url,
            "--metrics-port", "0"]
    with running(args, tmp_path / "proxy.log", lambda: serving(target)):
        with grpc.insecure_channel(target) as channel:
            response = detect_pb2_grpc.DetectorStub(channel).Detect(
                detect_pb2.DetectRequest(image=images["astronaut.png"]), timeout=10)
    assert len(response.detections) == 1
