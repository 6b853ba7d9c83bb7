"""The caller's deadline bounds the upstream call."""

from __future__ import annotations

import json
import time
from io import BytesIO

import grpc
import pytest
from PIL import Image

from detect.v1 import detect_pb2
from detect_stack.servers import wait_for


@pytest.fixture(scope="module")
def slow_image(images) -> bytes:
    """A 12-megapixel JPEG: decoding and resizing it takes far longer than 50 ms."""
    image = Image.open(BytesIO(images["astronaut.png"])).convert("RGB").resize((4000, 3000))
    buffer = BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_short_deadline_is_deadline_exceeded_promptly(detector, slow_image, proxy_server):
    request = detect_pb2.DetectRequest(image=slow_image)
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        detector.Detect(request, timeout=0.05, metadata=[("x-request-id", "rid-deadline")])
    elapsed = time.monotonic() - start
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 0.5
    # The proxy's log (and its metrics, from the same code) say so too, not CANCELLED.
    log = proxy_server[1]
    wait_for(lambda: '"request_id":"rid-deadline"' in log.log(), 5, "the call's log line")
    [line] = [json.loads(entry) for entry in log.log().splitlines() if '"rid-deadline"' in entry]
    assert line["code"] == "DEADLINE_EXCEEDED", line


def test_generous_deadline_succeeds(detector, slow_image):
    response = detector.Detect(detect_pb2.DetectRequest(image=slow_image), timeout=30)
    assert (response.image_width, response.image_height) == (4000, 3000)
