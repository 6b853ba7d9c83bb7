"""face_detector through a real localtriton, checked against an independent reference."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from detect_stack import reference_centerface as reference
from detect_stack.detector_client import Detections, detections, image_input

NETWORK_SIZE = 512  # model_repository/preprocess/config.pbtxt network_input_size


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


def _full_resolution_answer(client, encoded: bytes) -> Detections:
    """What the detector answers for ``encoded`` decoded at full resolution: the whole image
    decoded, resized to fit the network as preprocess does, sent as lossless PNG at that
    size (so preprocess resizes nothing), boxes scaled back to the original pixels."""
    from io import BytesIO

    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(Image.open(BytesIO(encoded))).convert("RGB")
    scale = NETWORK_SIZE / max(image.size)
    fitted = image.resize((round(image.width * scale), round(image.height * scale)),
                          Image.BILINEAR)
    buffer = BytesIO()
    fitted.save(buffer, format="PNG")
    found = detections(client.infer("face_detector", [image_input(buffer.getvalue())]))
    return Detections(found.boxes * (image.width / fitted.width), found.scores, found.classes)


@pytest.mark.parametrize("name", ["phone-12mp.jpg", "phone-4mp.jpg", "phone-1mp.jpg"])
def test_reduced_jpeg_decode_answers_as_the_full_resolution_decode(client, images, name):
    """Phone photos are decoded at 1/2-1/8 scale in the DCT domain; the answer stays that of
    a full-resolution decode."""
    reduced = detections(client.infer("face_detector", [image_input(images[name])]))
    full = _full_resolution_answer(client, images[name])
    assert len(reduced.boxes) == len(full.boxes) >= 1
    for box, score, full_box, full_score in zip(reduced.boxes, reduced.scores, full.boxes,
                                                full.scores, strict=True):
        assert reference.iou(box, full_box) >= 0.98
        assert score == pytest.approx(full_score, abs=0.02)


def test_reduced_decode_of_a_turned_photo_keeps_its_orientation(client, images):
    """A phone photo stored sideways (EXIF orientation 6) is reduced in its stored
    orientation and answered as displayed: the same boxes as the upright photo."""
    from io import BytesIO

    from PIL import Image

    upright = Image.open(BytesIO(images["phone-4mp.jpg"]))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buffer, format="JPEG", quality=88,
                                                      exif=exif)
    turned = detections(client.infer("face_detector", [image_input(buffer.getvalue())]))
    straight = detections(client.infer("face_detector", [image_input(images["phone-4mp.jpg"])]))
    assert len(turned.boxes) == len(straight.boxes) >= 1
    assert reference.iou(turned.boxes[0], straight.boxes[0]) >= 0.95
