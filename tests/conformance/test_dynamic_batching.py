"""Dynamic batching: concurrent callers share executions and each gets its own rows back."""

from __future__ import annotations

import asyncio
from io import BytesIO

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from PIL import Image

from detect_stack.detector_client import detections, image_input


def _variants(images: dict[str, bytes]) -> list[bytes]:
    """16 different images: faces at different places and sizes, and images without faces."""
    out: list[bytes] = []
    astronaut = Image.open(BytesIO(images["astronaut.png"])).convert("RGB")
    camera = Image.open(BytesIO(images["camera.png"])).convert("RGB")
    for i, source in enumerate([astronaut, camera] * 6):
        size = 256 + 64 * i
        image = source.resize((size, size + 32 * (i % 3)))
        if i % 4 == 1:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        buffer = BytesIO()
        image.save(buffer, format="PNG" if i % 2 else "JPEG")
        out.append(buffer.getvalue())
    out += [images["coffee.png"], images["rocket.jpg"], images["chelsea.png"], images["coffee.png"]]
    return out


def _batch_sizes(client: grpcclient.InferenceServerClient, model: str) -> dict[int, int]:
    stats = client.get_inference_statistics(model).model_stats[0]
    return {b.batch_size: b.compute_infer.count for b in stats.batch_stats}


def test_sixteen_concurrent_requests_are_batched_and_unmixed(triton_url, images):
    payloads = _variants(images)
    assert len(payloads) == 16
    with grpcclient.InferenceServerClient(triton_url) as client:
        # Expected answers, one request at a time.
        expected = [detections(client.infer("face_detector", [image_input(p)])) for p in payloads]
        assert sum(len(e.boxes) > 0 for e in expected) >= 10  # the test must be about something
        before = _batch_sizes(client, "centerface")

        async def concurrently():
            async with aioclient.InferenceServerClient(triton_url) as aio:
                return await asyncio.gather(*(
                    aio.infer("face_detector", [image_input(p)], request_id=str(i))
                    for i, p in enumerate(payloads)))

        results = asyncio.run(concurrently())
        after = _batch_sizes(client, "centerface")

    for i, (result, want) in enumerate(zip(results, expected, strict=True)):
        assert result.get_response().id == str(i)
        got = detections(result)
        assert len(got.boxes) == len(want.boxes), f"request {i}"
        np.testing.assert_allclose(got.boxes, want.boxes, atol=0.5, err_msg=f"request {i}")
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-3, err_msg=f"request {i}")
    new = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    assert any(size > 1 and count > 0 for size, count in new.items()), new
    assert sum(size * count for size, count in new.items()) == 16


def test_preferred_and_max_batch_respected(triton_url, images):
    """No execution is ever larger than max_batch_size."""
    with grpcclient.InferenceServerClient(triton_url) as client:
        for model in ("preprocess", "centerface", "postprocess"):
            sizes = _batch_sizes(client, model)
            assert sizes, model
            assert max(sizes) <= 8
