"""Correctness while under load: a gRPC client that samples Detect answers during a run.

h2load measures speed but never looks at a response body. While it runs, this client calls
Detect through the same front end every ``interval`` seconds and compares each answer with
the one the model server gives for the same image when asked directly (tritonclient,
outside the path under test): same boxes, scores and classes, within float tolerance.
"""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as grpcclient

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_proxy import contract
from detect_stack.servers import triton_client

OUTPUTS = tuple(contract.OUTPUTS)


def expected_detections(triton_url: str, model: str, image: bytes,
                        tls: Path | None = None) -> np.ndarray:
    """Rows of (x_min, y_min, x_max, y_max, score, class) straight from the backend (over TLS
    with the certificates in ``tls``)."""
    with triton_client(triton_url, tls) as client:
        batching = client.get_model_config(model).config.max_batch_size > 0
        shape = [1, 1] if batching else [1]
        tensor = grpcclient.InferInput("IMAGE", shape, "BYTES")
        tensor.set_data_from_numpy(np.array([image], dtype=np.object_).reshape(shape))
        result = client.infer(model, [tensor],
                              outputs=[grpcclient.InferRequestedOutput(o) for o in OUTPUTS])
    count = int(result.as_numpy(contract.NUM_DETECTIONS).reshape(-1)[0])
    boxes = result.as_numpy(contract.DETECTION_BOXES).reshape(-1, 4)[:count]
    scores = result.as_numpy(contract.DETECTION_SCORES).reshape(-1)[:count]
    classes = result.as_numpy(contract.DETECTION_CLASSES).reshape(-1)[:count]
    rows = np.column_stack([boxes, scores, classes]).astype(np.float64)
    return rows[np.argsort(-rows[:, 4], kind="stable")]


def answer_rows(response: detect_pb2.DetectResponse) -> np.ndarray:
    rows = [(d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max, d.score, d.class_id)
            for d in response.detections]
    return np.array(rows, dtype=np.float64).reshape(-1, 6)


class Sampler(threading.Thread):
    """Calls Detect every ``interval`` seconds until stopped; counts matches and errors."""

    def __init__(self, channel: grpc.Channel, image: bytes, model: str, expected: np.ndarray,
                 interval: float = 0.1, timeout: float = 30.0) -> None:
        super().__init__(daemon=True)
        self._stub = detect_pb2_grpc.DetectorStub(channel)
        self._request = detect_pb2.DetectRequest(image=image, model=model)
        self._expected = expected
        self._interval = interval
        self._timeout = timeout
        self._done = threading.Event()
        self.samples = self.mismatches = 0
        self.errors: dict[str, int] = {}

    def run(self) -> None:
        while not self._done.wait(self._interval):
            try:
                rows = answer_rows(self._stub.Detect(self._request, timeout=self._timeout))
            except grpc.RpcError as exc:
                self.errors[exc.code().name] = self.errors.get(exc.code().name, 0) + 1
                continue
            self.samples += 1
            if rows.shape != self._expected.shape or not np.allclose(rows, self._expected,
                                                                     rtol=1e-4, atol=1e-3):
                self.mismatches += 1

    def stop(self) -> dict:
        self._done.set()
        self.join(self._timeout + 5)
        return {"samples": self.samples, "mismatches": self.mismatches, "errors": self.errors}
