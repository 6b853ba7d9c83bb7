"""localtriton's nv_* metrics move exactly as requests are made, under Triton's names."""

from __future__ import annotations

import re
import urllib.request

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from detector_client import image_input
from servers import free_port, localtriton

SAMPLE = re.compile(r'^(nv_\w+)\{model="([^"]+)",version="(\d+)"\} (\S+)$')


def scrape(port: int) -> dict[tuple[str, str], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "# TYPE nv_inference_request_success counter" in text
    return {(m.group(1), m.group(2)): float(m.group(4))
            for m in map(SAMPLE.match, text.splitlines()) if m}


def test_counters_move_exactly(tmp_path, images):
    port = free_port()
    with localtriton(tmp_path, "--metrics-port", str(port)) as (url, _):
        before = scrape(port)
        assert before[("nv_inference_request_success", "face_detector")] == 0
        with grpcclient.InferenceServerClient(url) as client:
            for _ in range(3):
                client.infer("face_detector", [image_input(images["coffee.png"])])
            client.infer("face_detector", [image_input(images["coffee.png"], images["rocket.jpg"])])
            with pytest.raises(InferenceServerException):
                client.infer("face_detector", [image_input(b"not an image")])
        after = scrape(port)
    assert after[("nv_inference_request_success", "face_detector")] == 4
    assert after[("nv_inference_request_failure", "face_detector")] == 1
    assert after[("nv_inference_count", "face_detector")] == 5
    assert after[("nv_inference_count", "centerface")] == 5
    assert 1 <= after[("nv_inference_exec_count", "centerface")] <= 4
    assert after[("nv_inference_request_duration_us", "face_detector")] > 0
    assert after[("nv_inference_compute_infer_duration_us", "centerface")] > 0
    assert after[("nv_inference_request_failure", "preprocess")] == 1
