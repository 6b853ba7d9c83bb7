"""face_detector through a real localtriton, checked against an independent reference."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from detect_stack import reference_centerface as reference
from detect_stack.detector_client import detections, image_input


@pytest.fixture(scope="module")
def client(triton_url: str):
    with grpcclient.InferenceServerClient(triton_url) as c:
        yield c


def test_astronaut_has_exactly_one_face_matching_the_reference(client, images):
    result = client.infer("face_detector", [image_input(images["astronaut.png"])])
    found = detections(result)
    ref_boxes, ref_scores = reference.detect(images["astronaut.png"])
    assert len(found.boxes) == 1
    assert len(ref_boxes) == 1
    assert reference.iou(found.boxes[0], ref_boxes[0]) >= 0.9
    assert found.scores[0] == pytest.approx(ref_scores[0], abs=0.05)
    assert found.classes[0] == 0


@pytest.mark.parametrize("name", ["coffee.png", "rocket.jpg"])
def test_images_without_faces_give_none(client, images, name):
    result = client.infer("face_detector", [image_input(images[name])])
    assert result.as_numpy("num_detections")[0, 0] == 0
    assert not result.as_numpy("detection_boxes").any()
    assert len(reference.detect(images[name])[0]) == 0


def test_boxes_are_in_original_pixels_for_a_resized_image(client, images):
    """The same scene at another resolution gives the same box scaled by the same factor."""
    from io import BytesIO

    from PIL import Image

    original = Image.open(BytesIO(images["astronaut.png"]))
    buffer = BytesIO()
    original.resize((1024, 1024)).save(buffer, format="PNG")
    big = detections(client.infer("face_detector", [image_input(buffer.getvalue())]))
    small = detections(client.infer("face_detector", [image_input(images["astronaut.png"])]))
    assert len(big.boxes) == 1
    assert reference.iou(big.boxes[0] / 2, small.boxes[0]) >= 0.9


def test_exif_orientation_is_honoured(client, images):
    """A JPEG stored sideways with an EXIF rotation tag is detected as displayed."""
    from io import BytesIO

    from PIL import Image

    upright = Image.open(BytesIO(images["astronaut.png"])).convert("RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # pixels rotated 90° CCW
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° CW to display
    buffer = BytesIO()
    stored.save(buffer, format="JPEG", quality=95, exif=exif)
    rotated = detections(client.infer("face_detector", [image_input(buffer.getvalue())]))
    straight = detections(client.infer("face_detector", [image_input(images["astronaut.png"])]))
    assert len(rotated.boxes) == 1
    assert reference.iou(rotated.boxes[0], straight.boxes[0]) >= 0.8


def test_batch_of_rows_in_one_request(client, images):
    result = client.infer("face_detector", [image_input(images["astronaut.png"],
                                                        images["coffee.png"],
                                                        images["astronaut.png"])])
    counts = result.as_numpy("num_detections")[:, 0]
    assert list(counts) == [1, 0, 1]
    np.testing.assert_allclose(detections(result, 0).boxes, detections(result, 2).boxes, atol=1e-3)
