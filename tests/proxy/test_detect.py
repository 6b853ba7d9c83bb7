"""Detect end to end through a real proxy in front of a real localtriton."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image

from detect.v1 import detect_pb2
from detect_stack.detector_client import detections, image_input


def _boxes(response: detect_pb2.DetectResponse) -> np.ndarray:
    return np.array([[d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max]
                     for d in response.detections], dtype=np.float32).reshape(-1, 4)


def test_astronaut_matches_localtriton_directly(detector, triton_url, images):
    response = detector.Detect(detect_pb2.DetectRequest(image=images["astronaut.png"]), timeout=10)
    with grpcclient.InferenceServerClient(triton_url) as client:
        direct = detections(client.infer("face_detector", [image_input(images["astronaut.png"])]))
    assert len(response.detections) == 1
    face = response.detections[0]
    assert (face.label, face.class_id) == ("face", 0)
    np.testing.assert_allclose(_boxes(response), direct.boxes, rtol=0, atol=1e-4)
    assert face.score == pytest.approx(float(direct.scores[0]), abs=1e-6)
    assert (response.model, response.model_version) == ("face_detector", "1")
    assert (response.image_width, response.image_height) == (512, 512)


def test_no_faces(detector, images):
    response = detector.Detect(detect_pb2.DetectRequest(image=images["rocket.jpg"],
                                                        model="face_detector"), timeout=10)
    assert len(response.detections) == 0
    assert (response.image_width, response.image_height) == (640, 427)


@pytest.fixture(scope="module")
def two_faces(images) -> bytes:
    left = Image.open(BytesIO(images["astronaut.png"])).convert("RGB")
    right = Image.open(BytesIO(images["camera.png"])).convert("RGB")
    canvas = Image.new("RGB", (1024, 512))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (512, 0))
    buffer = BytesIO()
    canvas.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_min_score_and_max_detections(detector, two_faces):
    every = detector.Detect(detect_pb2.DetectRequest(image=two_faces), timeout=10).detections
    assert len(every) == 2
    scores = [d.score for d in every]
    assert scores == sorted(scores, reverse=True)
    best = detector.Detect(detect_pb2.DetectRequest(image=two_faces, max_detections=1),
                           timeout=10).detections
    assert [d.score for d in best] == scores[:1]
    between = (scores[0] + scores[1]) / 2
    filtered = detector.Detect(detect_pb2.DetectRequest(image=two_faces, min_score=between),
                               timeout=10).detections
    assert [d.score for d in filtered] == scores[:1]


def test_null_detector_through_the_proxy(detector, images):
    response = detector.Detect(detect_pb2.DetectRequest(image=images["coffee.png"],
                                                        model="null_detector"), timeout=10)
    assert response.model == "null_detector"
    [fixed] = response.detections
    assert (fixed.label, fixed.class_id) == ("object", 0)
    assert fixed.score == pytest.approx(0.99)
    assert (fixed.box.x_min, fixed.box.y_min, fixed.box.x_max, fixed.box.y_max) == (8, 8, 24, 24)
