"""grpcurl through Envoy with TLS: list, describe and Detect, all via reflection."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")


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
