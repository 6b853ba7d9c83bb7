"""One request id follows a call: generated (or kept) at the front, forwarded to Triton."""

from __future__ import annotations

import json
import time

from detect.v1 import detect_pb2, detect_pb2_grpc


def _access_log(edge) -> list[dict]:
    port = edge.envoy.front.rsplit(":", 1)[1]
    path = edge.envoy.process.log_path.parent / f"access-{port}.log"
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def _wait_for(edge, predicate, timeout: float = 5.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        entries = [e for e in _access_log(edge) if predicate(e)]
        if entries or time.monotonic() > deadline:
            return entries
        time.sleep(0.1)


def test_caller_request_id_reaches_the_triton_hop(edge, images):
    with edge.envoy.channel() as channel:
        detect_pb2_grpc.DetectorStub(channel).Detect(
            detect_pb2.DetectRequest(image=images["coffee.png"]), timeout=10,
            metadata=[("x-request-id", "rid-7f3a")])
    hops = _wait_for(edge, lambda e: e["request_id"] == "rid-7f3a"
                     and e["listener"] == "triton_egress")
    assert [h["method"] for h in hops] == ["/inference.GRPCInferenceService/ModelInfer"]
    front = [e for e in _access_log(edge)
             if e["request_id"] == "rid-7f3a" and e["listener"] == "front"]
    assert [(f["method"], f["grpc_status"]) for f in front] == [
        ("/detect.v1.Detector/Detect", "OK")]


def test_generated_request_id_is_forwarded(edge, images):
    before = {e["request_id"] for e in _access_log(edge)}
    with edge.envoy.channel() as channel:
        detect_pb2_grpc.DetectorStub(channel).Detect(
            detect_pb2.DetectRequest(image=images["rocket.jpg"]), timeout=10)
    front = _wait_for(edge, lambda e: e["listener"] == "front" and e["request_id"] not in before
                      and e["method"].endswith("/Detect"))
    assert len(front) == 1 and len(front[0]["request_id"]) >= 32
    generated = front[0]["request_id"]
    egress = _wait_for(edge, lambda e: e["listener"] == "triton_egress"
                       and e["request_id"] == generated)
    assert len(egress) == 1
