"""A server certificate rotated on disk is served by Envoy without a restart."""

from __future__ import annotations

import socket
import ssl
import time

from cryptography import x509

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_envoy import certs as pki
from detect_stack.stack import stack


def served_serial(front: str, ca_file: str) -> int:
    host, port = front.rsplit(":", 1)
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def test_rotation_without_restart(tmp_path, images):
    with stack(tmp_path, proxies=1, replicas=1) as s:
        ca = str(s.envoy.certs / "ca.crt")
        before = served_serial(s.envoy.front, ca)
        pid = s.envoy.process.popen.pid
        stem = pki.rotate_server(s.envoy.certs, ["localhost", "127.0.0.1"])
        expected = x509.load_pem_x509_certificate(
            (s.envoy.certs / f"{stem}.crt").read_bytes()).serial_number
        assert expected != before
        deadline = time.monotonic() + 10
        while served_serial(s.envoy.front, ca) != expected:
            assert time.monotonic() < deadline, "Envoy kept serving the old certificate"
            time.sleep(0.2)
        assert s.envoy.process.popen.pid == pid and s.envoy.process.popen.poll() is None
        with s.envoy.channel() as channel:
            response = detect_pb2_grpc.DetectorStub(channel).Detect(
                detect_pb2.DetectRequest(image=images["astronaut.png"]), timeout=10)
        assert len(response.detections) == 1

