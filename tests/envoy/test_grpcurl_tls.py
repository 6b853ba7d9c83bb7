"""grpcurl through Envoy with TLS: list, describe (with the proto's comments) and Detect,
all via reflection."""

from __future__ import annotations

import base64
import json
import subprocess

from detect_stack.grpcurl import GRPCURL, comment_above


def grpcurl(edge, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    tls = ["-cacert", str(edge.envoy.certs / "ca.crt"), "-authority", "localhost"]
    return subprocess.run([GRPCURL, *tls, *args], input=stdin, capture_output=True, text=True,
                          timeout=60)


def test_list_and_describe(edge):
    out = grpcurl(edge, edge.envoy.front, "list")
    assert out.returncode == 0, out.stderr
    assert "detect.v1.Detector" in out.stdout.split()
    out = grpcurl(edge, edge.envoy.front, "describe", "detect.v1.Detector")
    assert out.returncode == 0, out.stderr
    signature = "rpc Detect ( .detect.v1.DetectRequest ) returns ( .detect.v1.DetectResponse )"
    assert signature in out.stdout


def test_describe_shows_the_proto_comments(edge):
    """Reflection through Envoy serves the documented API as the proxy does."""
    for symbol, declaration in (("detect.v1.Detector", "service Detector"),
                                ("detect.v1.Detector", "rpc Detect"),
                                ("detect.v1.DetectRequest", "bytes image")):
        out = grpcurl(edge, edge.envoy.front, "describe", symbol)
        assert out.returncode == 0, out.stderr
        for line in comment_above(declaration):
            assert line in out.stdout, (line, out.stdout)


def test_detect(edge, images):
    body = json.dumps({"image": base64.b64encode(images["astronaut.png"]).decode()})
    out = grpcurl(edge, "-d", "@", edge.envoy.front, "detect.v1.Detector/Detect", stdin=body)
    assert out.returncode == 0, out.stderr
    [face] = json.loads(out.stdout)["detections"]
    assert face["label"] == "face"


def test_plaintext_grpcurl_fails(edge):
    out = subprocess.run([GRPCURL, "-plaintext", "-connect-timeout", "2", edge.envoy.front,
                          "list"], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
