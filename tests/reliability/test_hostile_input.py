"""Hostile input: only the expected codes come back, nothing crashes, memory stays flat."""

from __future__ import annotations

import socket
import struct
import time
import zlib
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_stack.servers import TESTDATA, proxy

EXPECTED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
REAL = [(TESTDATA / n).read_bytes() for n in ("coffee.png", "rocket.jpg")]


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))


def _flip(data: bytes, positions: list[int]) -> bytes:
    out = bytearray(data)
    for p in positions:
        out[p % len(out)] ^= 0xFF
    return bytes(out)


magic = st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x00\x00\x00WEBPVP8 ",
                         b"RIFF\x00\x00\x00\x00WEBPVP8L", b"RIFF\x00\x00\x00\x00WEBPVP8X", b"BM"])
images = st.one_of(
    st.binary(max_size=512),
    st.builds(lambda m, rest: m + rest, magic, st.binary(max_size=512)),
    st.builds(_png_header, st.integers(0, 100_000), st.integers(0, 100_000)),
    st.builds(lambda i, n: REAL[i][:n], st.integers(0, 1), st.integers(0, 4096)),
    st.builds(lambda i, p: _flip(REAL[i], p), st.integers(0, 1),
              st.lists(st.integers(0, 10**6), min_size=1, max_size=8)),
)
requests = st.builds(
    lambda image, model, score, limit: detect_pb2.DetectRequest(
        image=image, model=model, min_score=score, max_detections=limit),
    images,
    st.one_of(st.just(""), st.just("face_detector"), st.text(max_size=20)),
    st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.floats(0, 1, width=32)),
    st.integers(-(2**31), 2**31 - 1),
)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# The proxy's own resistance (codes, memory): the backend only sees what passes the proxy's
# checks, and how each backend answers bad images is checked on both in tests/conformance.
@pytest.mark.parametrize("backend", ["localtriton"], scope="session")
def test_property_only_expected_codes_and_flat_memory(tmp_path, triton_url):
    with proxy(tmp_path, triton_url, "--log-level", "warning") as (target, proc):
        with grpc.insecure_channel(target) as channel:
            stub = detect_pb2_grpc.DetectorStub(channel)
            seen: dict[grpc.StatusCode, int] = {}

            def call(request: detect_pb2.DetectRequest) -> None:
                try:
                    stub.Detect(request, timeout=30)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as err:
                    code = err.code()
                    assert code in EXPECTED, (code, err.details(), request.model,
                                              request.image[:32])
                seen[code] = seen.get(code, 0) + 1

            @settings(max_examples=500, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(requests)
            def rounds_of_500(request):
                call(request)

            rounds_of_500()  # warm-up: caches, pools and allocator reach their steady state
            samples = []
            for _ in range(10):  # 5,000 hostile requests, RSS sampled after every 500
                rounds_of_500()
                samples.append(_rss_kib(proc.popen.pid))
        assert proc.popen.poll() is None, "the proxy died"
    assert sum(seen.values()) >= 5500
    assert seen.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 1000
    # A single RSS reading swings by several percent with the size of the last requests;
    # medians of the first and last readings compare the steady state, which a leak raises.
    # gRPC's and the allocator's caches still move it by up to ~10 MiB between runs (a
    # 30,000-call run of the same traffic levels off within 2 MiB); a leak keeps climbing.
    start, end = sorted(samples[:3])[1], sorted(samples[-3:])[1]
    assert end < start + max(start * 0.10, 12 * 1024), (
        f"RSS grew from {start} KiB to {end} KiB: {samples}")


def _raw_grpc(target: str, body: bytes) -> dict[str, str]:
    """Send ``body`` as the DATA of a Detect call over a raw HTTP/2 connection."""
    host, port = target.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, [(":method", "POST"), (":scheme", "http"),
                                   (":path", "/detect.v1.Detector/Detect"),
                                   (":authority", target), ("content-type", "application/grpc"),
                                   ("te", "trailers"), ("grpc-timeout", "1S")])
        conn.send_data(stream, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        headers: dict[str, str] = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            data = sock.recv(65535)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    headers.update({k.decode(): v.decode() for k, v in event.headers})
                if isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    return headers
            sock.sendall(conn.data_to_send())
        return headers


def test_garbage_http2_bodies(proxy_target, detector):
    """Each call carries a 1 s grpc-timeout: a body that never completes a message (cut
    short, or no message at all) is answered DEADLINE_EXCEEDED when it runs out. Callers
    without a deadline are cut off by Envoy's route timeout (--max-grpc-timeout-s)."""
    bodies = {
        "compressed flag without encoding": b"\x01\x00\x00\x00\x04abcd",
        "length beyond the body": b"\x00\x00\x00\x10\x00abc",
        "not a grpc frame": b"GET / HTTP/1.1\r\n\r\n",
        "garbage protobuf": b"\x00\x00\x00\x00\x06\xff\xff\xff\xff\xff\xff",
        "empty": b"",
    }
    for name, body in bodies.items():
        headers = _raw_grpc(proxy_target, body)
        assert headers.get("grpc-status") not in (None, "0"), (name, headers)
    # ... and the proxy keeps serving.
    image = (TESTDATA / "astronaut.png").read_bytes()
    assert len(detector.Detect(detect_pb2.DetectRequest(image=image), timeout=10).detections) == 1
