"""Traces continue the caller's W3C context and reach the backend; one JSON line per call."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_proxy.config import ProxyConfig
from detect_proxy.server import DetectProxy
from detect_stack.servers import free_port, localtriton, proxy

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def verbose_backend(tmp_path_factory):
    with localtriton(tmp_path_factory.mktemp("verbose"), "--log-verbose", "1") as (url, proc):
        yield url, proc


@pytest.fixture()
def in_process_proxy(verbose_backend):
    """The proxy in this process, so that its spans land in an in-memory exporter."""
    exporter = InMemorySpanExporter()
    port = free_port()
    config = ProxyConfig(listen=f"127.0.0.1:{port}", triton_url=verbose_backend[0],
                         metrics_port=0, drain_delay_s=0)
    loop = asyncio.new_event_loop()
    started, stop = threading.Event(), None

    async def serve():
        nonlocal stop
        stop = asyncio.Event()
        server = DetectProxy(config, span_exporter=exporter)
        await server.start()
        started.set()
        await stop.wait()
        await server.stop()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),))
    thread.start()
    assert started.wait(15)
    yield f"127.0.0.1:{port}", exporter
    loop.call_soon_threadsafe(stop.set)
    thread.join(30)
    loop.close()


def test_span_per_detect_with_upstream_child_and_context_at_the_backend(in_process_proxy,
                                                                         verbose_backend, images):
    target, exporter = in_process_proxy
    with grpc.insecure_channel(target) as channel:
        detect_pb2_grpc.DetectorStub(channel).Detect(
            detect_pb2.DetectRequest(image=images["coffee.png"]), timeout=10,
            metadata=[("traceparent", f"00-{TRACE_ID}-{CALLER_SPAN}-01"),
                      ("x-request-id", "rid-trace-1")])
    spans = {s.name: s for s in exporter.get_finished_spans()}
    server = spans["detect.v1.Detector/Detect"]
    client = spans["inference.GRPCInferenceService/ModelInfer"]
    assert server.kind == SpanKind.SERVER and client.kind == SpanKind.CLIENT
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    assert f"{server.parent.span_id:016x}" == CALLER_SPAN
    assert client.parent.span_id == server.context.span_id
    assert client.context.trace_id == server.context.trace_id
    assert server.attributes["rpc.grpc.status_code"] == 0
    assert server.attributes["detect.request_id"] == "rid-trace-1"

    expected = f"traceparent=00-{TRACE_ID}-{client.context.span_id:016x}-01"
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in verbose_backend[1].log().splitlines()
                 if "id=rid-trace-1" in line]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(lines) == 1, verbose_backend[1].log()[-2000:]
    assert "model=face_detector" in lines[0]
    assert "x-request-id=rid-trace-1" in lines[0] and expected in lines[0]


def test_failed_call_marks_its_span(in_process_proxy):
    target, exporter = in_process_proxy
    with grpc.insecure_channel(target) as channel:
        with pytest.raises(grpc.RpcError):
            detect_pb2_grpc.DetectorStub(channel).Detect(detect_pb2.DetectRequest(image=b""),
                                                         timeout=10)
    [server] = [s for s in exporter.get_finished_spans() if s.name == "detect.v1.Detector/Detect"]
    assert server.attributes["rpc.grpc.status_code"] == 3
    assert server.status.description == "image is empty"


def test_one_json_line_per_call(tmp_path, triton_url, images):
    with proxy(tmp_path, triton_url) as (target, proc):
        with grpc.insecure_channel(target) as channel:
            stub = detect_pb2_grpc.DetectorStub(channel)
            stub.Detect(detect_pb2.DetectRequest(image=images["coffee.png"]), timeout=10,
                        metadata=[("x-request-id", "rid-log-ok"), ("x-client-id", "alpha")])
            with pytest.raises(grpc.RpcError):
                stub.Detect(detect_pb2.DetectRequest(image=b"zz"), timeout=10,
                            metadata=[("x-request-id", "rid-log-bad")])
        time.sleep(0.2)
        entries = [json.loads(line) for line in proc.log().splitlines() if line.startswith("{")]
    calls = {e["request_id"]: e for e in entries if e.get("message") == "Detect"}
    ok, bad = calls["rid-log-ok"], calls["rid-log-bad"]
    assert (ok["model"], ok["code"], ok["client"]) == ("face_detector", "OK", "alpha")
    assert ok["duration_ms"] > 0 and ok["image_bytes"] == len(images["coffee.png"])
    assert bad["code"] == "INVALID_ARGUMENT" and "not recognised" in bad["error"]
    assert len([e for e in entries if e.get("message") == "Detect"]) == 2


def test_no_call_lines_at_warning_level(tmp_path, triton_url, images):
    with proxy(tmp_path, triton_url, "--log-level", "warning") as (target, proc):
        with grpc.insecure_channel(target) as channel:
            detect_pb2_grpc.DetectorStub(channel).Detect(
                detect_pb2.DetectRequest(image=images["coffee.png"]), timeout=10)
        assert '"message":"Detect"' not in proc.log()
