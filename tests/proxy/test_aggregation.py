"""Request aggregation: concurrent calls share a ModelInfer; each gets its own answer."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO

import grpc
import pytest
from PIL import Image

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_stack.promtext import scrape, value
from detect_stack.servers import free_port, proxy


def _variants(images: dict[str, bytes]) -> list[bytes]:
    astronaut = Image.open(BytesIO(images["astronaut.png"])).convert("RGB")
    out = []
    for i in range(12):
        buffer = BytesIO()
        astronaut.resize((256 + 32 * i, 256 + 32 * i)).save(buffer, format="JPEG")
        out.append(buffer.getvalue())
    return out + [images[name]
                  for name in ("coffee.png", "rocket.jpg", "chelsea.png", "camera.png")]


def _answers(target: str, payloads: list[bytes], workers: int) -> list:
    with grpc.insecure_channel(target) as channel:
        stub = detect_pb2_grpc.DetectorStub(channel)

        def one(image: bytes):
            try:
                return stub.Detect(detect_pb2.DetectRequest(image=image), timeout=30)
            except grpc.RpcError as err:
                return err.code()

        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, payloads))


def _boxes(response) -> list[float]:
    return [v for d in response.detections
            for v in (d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max)]


def test_concurrent_calls_are_batched_and_unmixed(tmp_path, triton_url, proxy_target, images):
    payloads = _variants(images)
    expected = _answers(proxy_target, payloads, workers=1)  # aggregation off, one at a time
    metrics_port = free_port()
    with proxy(tmp_path, triton_url, "--batch-max-wait-us", "20000",
               metrics_port=metrics_port) as (target, _):
        got = _answers(target, payloads, workers=16)
        samples = scrape(metrics_port)
    for i, (want, have) in enumerate(zip(expected, got, strict=True)):
        assert not isinstance(have, grpc.StatusCode), (i, have)
        assert len(have.detections) == len(want.detections), i
        assert _boxes(have) == pytest.approx(_boxes(want), abs=0.5), i
    calls = value(samples, "detect_upstream_batch_size_count", model="face_detector")
    images_sent = value(samples, "detect_upstream_batch_size_sum", model="face_detector")
    assert images_sent == len(payloads)
    assert calls < len(payloads), "no call was aggregated"


def test_a_bad_image_fails_only_its_own_call(tmp_path, triton_url, images):
    corrupt = images["coffee.png"][:2000]  # header passes, decoding fails in the backend
    payloads = [images["rocket.jpg"]] * 5 + [corrupt] + [images["astronaut.png"]] * 5
    with proxy(tmp_path, triton_url, "--batch-max-wait-us", "50000") as (target, _):
        got = _answers(target, payloads, workers=len(payloads))
    assert got[5] == grpc.StatusCode.INVALID_ARGUMENT
    assert all(len(r.detections) == 0 for r in got[:5])
    assert all(len(r.detections) == 1 for r in got[6:])


def test_a_call_is_never_held_past_its_deadline(tmp_path, triton_url, images):
    with proxy(tmp_path, triton_url, "--batch-max-wait-us", "2000000") as (target, _):
        with grpc.insecure_channel(target) as channel:
            stub = detect_pb2_grpc.DetectorStub(channel)
            start = time.monotonic()
            response = stub.Detect(detect_pb2.DetectRequest(image=images["coffee.png"],
                                                            model="null_detector"), timeout=0.5)
            elapsed = time.monotonic() - start
    assert response.model == "null_detector"
    assert elapsed < 0.5
