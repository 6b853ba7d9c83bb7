"""object_detector (NanoDet-g, COCO-80), versions 1 and 2, against an independent reference.

The reference shares no code with the model repository: its own Pillow/numpy letterbox, the
ONNX network run directly by onnxruntime, its own box decoding (per cell and class, NanoDet's
GFL convention) and its own per-class NMS. Only the network file and the thresholds of
object_detector's configuration are shared.
"""

from __future__ import annotations

import asyncio
from functools import cache
from io import BytesIO

import numpy as np
import onnxruntime
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from PIL import Image, ImageOps
from tritonclient.utils import InferenceServerException

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_stack.detector_client import Detections, detections, image_input
from detect_stack.servers import MODEL_REPOSITORY
from detect_stack.stack import stack

MODEL = "object_detector"
NETWORK = "nanodet"
SIZES = {"1": 416, "2": 320}  # the network input side of each version
THRESHOLD = 0.35  # object_detector/config.pbtxt score_threshold
NMS_IOU = 0.6  # object_detector/config.pbtxt nms_iou_threshold
MEAN = np.array([103.53, 116.28, 123.675], dtype=np.float32)  # NanoDet's, for BGR
STD = np.array([57.375, 57.12, 58.395], dtype=np.float32)
REG_MAX = 10
PERSON, MOTORCYCLE, CAT = 0, 3, 15
# Images with something (or nothing) NanoDet-g finds, at both versions.
IMAGES = ("astronaut.png", "motorcycle_left.png", "chelsea.png", "rocket.jpg", "phone-1mp.jpg")


@pytest.fixture(scope="module")
def client(triton_url: str):
    with grpcclient.InferenceServerClient(triton_url) as c:
        yield c


@cache
def _session(version: str) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(str(MODEL_REPOSITORY / NETWORK / version / "model.onnx"),
                                        options, providers=["CPUExecutionProvider"])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = (max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
             * max(0.0, min(a[3], b[3]) - max(a[1], b[1])))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def reference(encoded: bytes, version: str) -> Detections:
    """NanoDet-g's answer for ``encoded`` at ``version``'s input size, in original pixels."""
    image = ImageOps.exif_transpose(Image.open(BytesIO(encoded))).convert("RGB")
    size = SIZES[version]
    scale = size / max(image.size)
    width, height = round(image.width * scale), round(image.height * scale)
    bgr = np.asarray(image.resize((width, height), Image.BILINEAR), dtype=np.float32)[..., ::-1]
    padded = np.zeros((size, size, 3), dtype=np.float32)  # black below and to the right
    padded[:height, :width] = bgr
    pixels = ((padded - MEAN) / STD).transpose(2, 0, 1)[None]
    session = _session(version)
    outputs = dict(zip([o.name for o in session.get_outputs()],
                       session.run(None, {"input": pixels}), strict=True))
    candidates: list[tuple[float, int, np.ndarray]] = []
    for stride in (8, 16, 32):
        scores = outputs[f"scores_{stride}"][0]
        distances = outputs[f"distances_{stride}"][0]
        grid = size // stride
        for cell in range(scores.shape[0]):
            classes = np.flatnonzero(scores[cell] > THRESHOLD)
            if not classes.size:
                continue
            y, x = divmod(cell, grid)
            cx, cy = (x + 0.5) * stride, (y + 0.5) * stride
            sides = []
            for side in range(4):
                logits = distances[cell, side * (REG_MAX + 1):(side + 1) * (REG_MAX + 1)]
                p = np.exp(logits - logits.max())
                sides.append(float((p / p.sum()) @ np.arange(REG_MAX + 1)) * stride)
            box = np.array([cx - sides[0], cy - sides[1], cx + sides[2], cy + sides[3]]) / scale
            box = np.clip(box, 0, [image.width, image.height, image.width, image.height])
            candidates.extend((float(scores[cell, c]), int(c), box) for c in classes)
    kept: list[tuple[float, int, np.ndarray]] = []
    for score, label, box in sorted(candidates, key=lambda t: -t[0]):
        if all(k[1] != label or _iou(k[2], box) < NMS_IOU for k in kept):
            kept.append((score, label, box))
    kept = kept[:100]
    return Detections(np.array([k[2] for k in kept], dtype=np.float32).reshape(-1, 4),
                      np.array([k[0] for k in kept], dtype=np.float32),
                      np.array([k[1] for k in kept], dtype=np.int32))


def assert_same(found: Detections, expected: Detections, margin: float = 0.03) -> None:
    """Every clear detection (score at least ``margin`` above the threshold) of either answer
    is in the other: same class, IoU >= 0.9, score within ``margin``. Detections right at the
    threshold may fall either side of it after the different resize and float order."""
    for a, b in ((found, expected), (expected, found)):
        for box, score, label in zip(a.boxes, a.scores, a.classes, strict=True):
            if score < THRESHOLD + margin:
                continue
            same = [(_iou(box, other), abs(score - other_score))
                    for other, other_score, other_label in zip(b.boxes, b.scores, b.classes,
                                                               strict=True)
                    if other_label == label]
            assert any(iou >= 0.9 and gap <= margin for iou, gap in same), (
                f"class {label} score {score:.3f} box {box.round(1)} not matched in {b}")


def _infer(client, version: str, *encoded: bytes):
    return client.infer(MODEL, [image_input(*encoded)], model_version=version)


def test_both_versions_of_the_detector_and_its_network_are_ready(client):
    for name in (MODEL, NETWORK):
        assert client.get_model_metadata(name).versions == ["1", "2"]
        for version in SIZES:
            assert client.is_model_ready(name, version)
    meta = client.get_model_metadata(MODEL)
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("IMAGE", "BYTES", [-1, 1])]
    assert {t.name: (t.datatype, list(t.shape)) for t in meta.outputs} == {
        "num_detections": ("INT32", [-1, 1]), "detection_boxes": ("FP32", [-1, 100, 4]),
        "detection_scores": ("FP32", [-1, 100]), "detection_classes": ("INT32", [-1, 100])}
    config = client.get_model_config(MODEL).config
    labels = config.parameters["labels"].string_value.split(",")
    assert labels == (MODEL_REPOSITORY / MODEL / "labels.txt").read_text().splitlines()
    assert (len(labels), labels[PERSON], labels[MOTORCYCLE], labels[CAT]) == (
        80, "person", "motorcycle", "cat")


@pytest.mark.parametrize("version", sorted(SIZES))
def test_answers_match_the_reference(client, images, version):
    for name in IMAGES:
        result = _infer(client, version, images[name])
        assert result.get_response().model_version == version
        found = detections(result)
        expected = reference(images[name], version)
        # The server decodes a large JPEG at a reduced DCT scale; the reference decodes it whole.
        assert_same(found, expected, margin=0.06 if name.startswith("phone") else 0.03)
        if name == "rocket.jpg":
            assert len(found.boxes) == len(expected.boxes) == 0
    best = {name: detections(_infer(client, version, images[name]))
            for name in ("astronaut.png", "motorcycle_left.png", "chelsea.png")}
    assert best["astronaut.png"].classes[0] == PERSON
    assert best["motorcycle_left.png"].classes[0] == MOTORCYCLE
    assert best["chelsea.png"].classes[0] == CAT  # a landscape image: letterboxed


def test_exif_orientation_is_honoured(client, images):
    """A JPEG stored sideways with an EXIF rotation tag is detected as displayed."""
    upright = Image.open(BytesIO(images["motorcycle_left.png"])).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    buffer = BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buffer, format="JPEG", quality=95,
                                                      exif=exif)
    turned = detections(_infer(client, "1", buffer.getvalue()))
    straight = detections(_infer(client, "1", images["motorcycle_left.png"]))
    assert turned.classes[0] == straight.classes[0] == MOTORCYCLE
    assert _iou(turned.boxes[0], straight.boxes[0]) >= 0.9


def test_version_2_is_the_network_at_320_and_the_default(client, images):
    """Version 2 answers as NanoDet at 320, not at 416: a similar box with another score.
    A request naming no version gets the highest one, as Triton serves it."""
    astronaut = images["astronaut.png"]
    v1 = detections(_infer(client, "1", astronaut))
    v2 = detections(_infer(client, "2", astronaut))
    at_320, at_416 = reference(astronaut, "2"), reference(astronaut, "1")
    assert v1.classes[0] == v2.classes[0] == PERSON
    assert _iou(v1.boxes[0], v2.boxes[0]) >= 0.8
    assert v2.scores[0] == pytest.approx(at_320.scores[0], abs=0.01)
    assert abs(v2.scores[0] - at_416.scores[0]) > 0.03
    assert abs(v1.scores[0] - v2.scores[0]) > 0.03
    unversioned = client.infer(MODEL, [image_input(astronaut)])
    assert unversioned.get_response().model_version == "2"
    np.testing.assert_allclose(detections(unversioned).boxes, v2.boxes, atol=1e-3)


def test_batch_of_mixed_images_in_one_request(client, images):
    names = ["astronaut.png", "rocket.jpg", "motorcycle_left.png", "phone-1mp.jpg",
             "chelsea.png"]
    result = _infer(client, "1", *(images[n] for n in names))
    assert result.as_numpy("num_detections").shape == (len(names), 1)
    for row, name in enumerate(names):
        alone = detections(_infer(client, "1", images[name]))
        together = detections(result, row)
        np.testing.assert_array_equal(together.classes, alone.classes)
        np.testing.assert_allclose(together.boxes, alone.boxes, atol=1e-2)
        np.testing.assert_allclose(together.scores, alone.scores, atol=1e-4)


def _batch_sizes(client, model: str, version: str) -> dict[int, int]:
    stats = client.get_inference_statistics(model, version).model_stats[0]
    return {b.batch_size: b.compute_infer.count for b in stats.batch_stats}


def test_concurrent_requests_share_executions_and_a_bad_image_fails_alone(client, images,
                                                                         triton_url):
    names = ["astronaut.png", "motorcycle_left.png", "chelsea.png", "rocket.jpg"] * 2
    expected = [detections(_infer(client, "1", images[n])) for n in names]
    before = {m: _batch_sizes(client, m, "1") for m in (MODEL, NETWORK)}

    async def concurrently():
        async with aioclient.InferenceServerClient(triton_url) as aio:
            calls = [aio.infer(MODEL, [image_input(images[n])], model_version="1")
                     for n in names]
            calls.insert(3, aio.infer(MODEL, [image_input(b"not an image")], model_version="1"))
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(concurrently())
    after = {m: _batch_sizes(client, m, "1") for m in (MODEL, NETWORK)}
    bad = results.pop(3)
    assert isinstance(bad, InferenceServerException)
    assert bad.status() == "StatusCode.INVALID_ARGUMENT"
    for name, result, want in zip(names, results, expected, strict=True):
        got = detections(result)
        np.testing.assert_array_equal(got.classes, want.classes, err_msg=name)
        np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-2, err_msg=name)
    for model in (MODEL, NETWORK):
        new = {size: count - before[model].get(size, 0) for size, count in after[model].items()}
        assert any(size > 1 and count > 0 for size, count in new.items()), (model, new)


def test_the_network_takes_a_batch_at_either_size(client):
    for size in SIZES.values():
        pixels = np.zeros((2, 3, size, size), dtype=np.float32)
        tensor = grpcclient.InferInput("input", list(pixels.shape), "FP32")
        tensor.set_data_from_numpy(pixels)
        result = client.infer(NETWORK, [tensor], model_version="1")
        assert result.as_numpy("scores_8").shape == (2, (size // 8) ** 2, 80)
        assert result.as_numpy("distances_32").shape == (2, (size // 32) ** 2, 44)


@pytest.mark.parametrize("data", [b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 64],
                         ids=["empty", "text", "truncated-png"])
def test_bad_images_are_refused_as_face_detector_refuses_them(client, images, data):
    with pytest.raises(InferenceServerException) as face:
        client.infer("face_detector", [image_input(images["coffee.png"], data)])
    for version in SIZES:
        with pytest.raises(InferenceServerException) as err:
            _infer(client, version, images["coffee.png"], data)
        assert err.value.status() == face.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert err.value.message().startswith("image 1 ")
        # Triton prefixes an ensemble step's error with the ensemble's name.
        assert face.value.message().endswith(err.value.message())


def _answer_detections(answer: detect_pb2.DetectResponse) -> Detections:
    return Detections(
        np.array([[d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max]
                  for d in answer.detections], dtype=np.float32).reshape(-1, 4),
        np.array([d.score for d in answer.detections], dtype=np.float32),
        np.array([d.class_id for d in answer.detections], dtype=np.int32))


def test_through_envoy_with_tls_and_the_proxy(tmp_path, backend, images):
    """What a caller meets: the same detections as the reference, both versions, COCO names."""
    with stack(tmp_path, replicas=1, proxies=1, backend=backend,
               proxy_flags=("--exposed-models", "face_detector,object_detector")) as s, \
            s.envoy.channel() as channel:
        stub = detect_pb2_grpc.DetectorStub(channel)
        for name in IMAGES:
            for version in SIZES:
                answer = stub.Detect(detect_pb2.DetectRequest(
                    image=images[name], model=MODEL, model_version=version), timeout=30)
                assert (answer.model, answer.model_version) == (MODEL, version)
                assert_same(_answer_detections(answer), reference(images[name], version))
        [person] = [d for d in stub.Detect(detect_pb2.DetectRequest(
            image=images["astronaut.png"], model=MODEL, model_version="1", min_score=0.5),
            timeout=30).detections]
        assert (person.class_id, person.label) == (PERSON, "person")
