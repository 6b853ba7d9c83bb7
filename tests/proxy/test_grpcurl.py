"""grpcurl against the proxy through server reflection alone: no proto files given."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest

from detect_stack.grpcurl import GRPCURL


def grpcurl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([GRPCURL, *args], input=stdin, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture(scope="module", autouse=True)
def _have_grpcurl():
    assert Path(GRPCURL).exists(), "grpcurl is installed by the test extra"


def test_list(proxy_target):
    out = grpcurl("-plaintext", proxy_target, "list")
    assert out.returncode == 0, out.stderr
    assert set(out.stdout.split()) >= {"detect.v1.Detector", "grpc.health.v1.Health",
                                       "grpc.reflection.v1alpha.ServerReflection"}


def test_describe(proxy_target):
    out = grpcurl("-plaintext", proxy_target, "describe", "detect.v1.Detector")
    assert out.returncode == 0, out.stderr
    assert ("rpc Detect ( .detect.v1.DetectRequest ) returns ( .detect.v1.DetectResponse )"
            in out.stdout)
    out = grpcurl("-plaintext", proxy_target, "describe", "detect.v1.DetectRequest")
    assert "bytes image = 1;" in out.stdout and "float min_score = 3;" in out.stdout


def test_detect_with_base64_image(proxy_target, images):
    body = json.dumps({"image": base64.b64encode(images["astronaut.png"]).decode()})
    out = grpcurl("-plaintext", "-d", "@", proxy_target, "detect.v1.Detector/Detect", stdin=body)
    assert out.returncode == 0, out.stderr
    response = json.loads(out.stdout)
    assert response["model"] == "face_detector"
    assert (response["image_width"], response["image_height"]) == (512, 512)  # proto names
    [face] = response["detections"]
    assert face["label"] == "face" and face["score"] > 0.9


def test_health_check(proxy_target):
    out = grpcurl("-plaintext", "-d", '{"service": "detect.v1.Detector"}', proxy_target,
                  "grpc.health.v1.Health/Check")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"status": "SERVING"}


def test_error_status_is_visible(proxy_target):
    out = grpcurl("-plaintext", "-d", '{"image": ""}', proxy_target, "detect.v1.Detector/Detect")
    assert out.returncode != 0
    assert "InvalidArgument" in out.stderr and "image is empty" in out.stderr
