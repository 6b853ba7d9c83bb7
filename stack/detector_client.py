"""Small helpers to call face_detector through tritonclient, shared by tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient

from detect_proxy import contract

OUTPUTS = tuple(contract.OUTPUTS)


@dataclass
class Detections:
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


def image_input(*encoded: bytes) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("IMAGE", [len(encoded), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[e] for e in encoded], dtype=np.object_))
    return tensor


def detections(result, row: int = 0) -> Detections:
    k = int(result.as_numpy(contract.NUM_DETECTIONS)[row, 0])
    return Detections(result.as_numpy(contract.DETECTION_BOXES)[row, :k],
                      result.as_numpy(contract.DETECTION_SCORES)[row, :k],
                      result.as_numpy(contract.DETECTION_CLASSES)[row, :k])
