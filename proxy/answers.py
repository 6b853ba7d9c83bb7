"""The caller's answer: a model's whole answer from a ModelInfer result, the caller's view
of it, and an image's own status in a batch or a stream.

The whole answer keeps every detection the model reported, best first; the cache stores it,
and ``select`` applies the caller's ``min_score`` and ``max_detections`` last, so a cached
answer is filtered exactly as a fresh one.
"""

from __future__ import annotations

import grpc
import numpy as np
from google.rpc import status_pb2
from tritonclient.grpc import InferResult

from detect.v1 import detect_pb2

from . import contract
from .errors import ProxyError
from .image_header import ImageInfo
from .models import DetectorModel

_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def build_response(result: InferResult, row: int, model: DetectorModel,
                   info: ImageInfo) -> detect_pb2.DetectResponse:
    """The model's whole answer from row ``row`` of a (possibly batched) ModelInfer result,
    best first."""
    def output(name: str) -> np.ndarray:
        array: np.ndarray = result.as_numpy(name)
        return array[row] if model.batching else array

    count = int(output(contract.NUM_DETECTIONS).reshape(-1)[0])
    boxes = output(contract.DETECTION_BOXES).reshape(-1, 4)[:count]
    scores = output(contract.DETECTION_SCORES).reshape(-1)[:count]
    classes = output(contract.DETECTION_CLASSES).reshape(-1)[:count]
    response = result.get_response()
    out = detect_pb2.DetectResponse(model=response.model_name,
                                    model_version=response.model_version,
                                    image_width=info.width, image_height=info.height,
                                    variant=model.variant)
    for i in np.argsort(-scores, kind="stable"):
        x_min, y_min, x_max, y_max = (float(v) for v in boxes[i])
        class_id = int(classes[i])
        out.detections.add(
            box=detect_pb2.BoundingBox(x_min=x_min, y_min=y_min, x_max=x_max, y_max=y_max),
            score=float(scores[i]), class_id=class_id, label=model.label(class_id))
    return out


def select(answer: detect_pb2.DetectResponse,
           request: detect_pb2.DetectRequest) -> detect_pb2.DetectResponse:
    """The caller's view of a whole answer: ``min_score``, then ``max_detections``."""
    if not request.min_score and not request.max_detections:
        return answer
    kept = [d for d in answer.detections if d.score >= request.min_score]
    if request.max_detections:
        kept = kept[: request.max_detections]
    out = detect_pb2.DetectResponse(model=answer.model, model_version=answer.model_version,
                                    image_width=answer.image_width,
                                    image_height=answer.image_height, variant=answer.variant)
    out.detections.extend(kept)
    return out


def error_result(exc: ProxyError) -> detect_pb2.DetectResult:
    return detect_pb2.DetectResult(
        error=status_pb2.Status(code=exc.code.value[0], message=exc.message))


def code_name(code: int) -> str:
    """The name of a google.rpc.Status code, as metrics label it."""
    return _CODE_NAMES.get(code, "UNKNOWN")
