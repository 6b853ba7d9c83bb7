"""Triton's nv_* metrics move exactly as requests are made, under Triton's names and labels."""

from __future__ import annotations

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from detect_stack.detector_client import image_input
from detect_stack.promtext import scrape, value
from detect_stack.servers import TRITON, free_port, triton_server

FAILURE_REASONS = {"BACKEND", "CANCELED", "REJECTED", "OTHER"}
MODELS = {"face_detector", "preprocess", "centerface", "postprocess", "null_detector",
          "object_detector", "nanodet"}


def test_families_and_labels_are_tritons(tmp_path, backend):
    port = free_port()
    with triton_server(backend, tmp_path, "--metrics-port", str(port)):
        samples = scrape(port)
    names = {n for n, _, _ in samples}
    assert {"nv_inference_request_success", "nv_inference_request_failure",
            "nv_inference_count", "nv_inference_exec_count", "nv_inference_request_duration_us",
            "nv_inference_queue_duration_us", "nv_inference_compute_input_duration_us",
            "nv_inference_compute_infer_duration_us", "nv_inference_compute_output_duration_us",
            "nv_inference_pending_request_count"} <= names
    for name, labels, _ in samples:
        if name == "nv_inference_request_failure":
            assert set(labels) == {"model", "version", "reason"}
        elif name.startswith("nv_inference_"):
            assert set(labels) == {"model", "version"}, (name, labels)
    assert {(labels["model"], labels["reason"]) for n, labels, _ in samples
            if n == "nv_inference_request_failure"} == {(m, r) for m in MODELS
                                                        for r in FAILURE_REASONS}
    pending = {labels["model"] for n, labels, _ in samples
               if n == "nv_inference_pending_request_count"}
    assert pending == MODELS
    assert value(samples, "nv_inference_pending_request_count") == 0
    # Deviation: localtriton does not export Triton's host metrics.
    assert ("nv_cpu_utilization" in names) == (backend == TRITON)


def test_counters_move_exactly(tmp_path, images, backend):
    port = free_port()
    with triton_server(backend, tmp_path, "--metrics-port", str(port)) as (url, _):
        before = scrape(port)
        assert value(before, "nv_inference_request_success", model="face_detector") == 0
        with grpcclient.InferenceServerClient(url) as client:
            for _ in range(3):
                client.infer("face_detector", [image_input(images["coffee.png"])])
            client.infer("face_detector", [image_input(images["coffee.png"], images["rocket.jpg"])])
            with pytest.raises(InferenceServerException):
                client.infer("face_detector", [image_input(b"not an image")])
        after = scrape(port)

    def count(name: str, **labels: str) -> float:
        return value(after, name, **labels)

    assert count("nv_inference_request_success", model="face_detector") == 4
    assert count("nv_inference_count", model="face_detector") == 5
    assert count("nv_inference_count", model="centerface") == 5
    assert 1 <= count("nv_inference_exec_count", model="centerface") <= 4
    assert count("nv_inference_request_duration_us", model="face_detector") > 0
    assert count("nv_inference_compute_infer_duration_us", model="centerface") > 0
    # The failed ensemble request is reason OTHER. Deviations (Triton 2.51's own counting,
    # not copied): Triton counts a failed ensemble request twice, and a Python-backend model
    # that answers with an error response as a success.
    failed = count("nv_inference_request_failure", model="face_detector", reason="OTHER")
    assert failed == (2 if backend == TRITON else 1)
    assert count("nv_inference_request_failure", model="face_detector") == failed
    assert count("nv_inference_request_failure", model="preprocess") == (
        0 if backend == TRITON else 1)
    assert count("nv_inference_request_success", model="preprocess") == (
        5 if backend == TRITON else 4)
