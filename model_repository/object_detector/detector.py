"""object_detector: NanoDet-g behind the detector contract, one Python model per version.

Each version's model.py subclasses ObjectDetector with its network input size. One execution
takes every request the dynamic batcher gathered: each image is decoded and letterboxed, all
of them go to the network in one call (Business Logic Scripting, ``nanodet`` at this model's
own version), and each request gets its rows back decoded, after per-class NMS, in original
pixels. A bad image fails its own request only, with INVALID_ARG, as in face_detector.

Decoding is preprocess's (``preprocess/1/model.py``: reduced JPEG decode, EXIF orientation,
pixel formats, size limits) and NMS is postprocess's, loaded from their files rather than
copied, so both detectors accept, refuse and suppress alike. The network's output follows
NanoDet's (GFL head) convention: cell centres at (i + 0.5) * stride, box sides at the
expectation of a softmax over 11 bins times the stride.

Runs unchanged in Triton's Python backend and in localtriton (numpy and Pillow).
"""

import importlib.util
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

# NanoDet's normalisation of BGR pixels.
MEAN = np.array([103.53, 116.28, 123.675], dtype=np.float32)
STD = np.array([57.375, 57.12, 58.395], dtype=np.float32)
STRIDES = (8, 16, 32)
BINS = 11  # reg_max + 1: distance bins 0..10 (in strides) per side
NETWORK_OUTPUTS = tuple(f"scores_{s}" for s in STRIDES) + tuple(f"distances_{s}" for s in STRIDES)
REPOSITORY = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


def load_module(name, relative_path):
    """A module of the repository, by path: Triton's Python backend and localtriton import
    model.py files in different ways, and neither puts other models' folders on sys.path."""
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(REPOSITORY, relative_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


preprocess = load_module("object_detector_preprocess", "preprocess/1/model.py")
postprocess = load_module("object_detector_postprocess", "postprocess/1/model.py")


class NetworkFailed(Exception):
    def __init__(self, message, code):
        super().__init__(message)
        self.code = code  # the network's own (UNAVAILABLE while it is not ready, say)


def letterbox(resized, size):
    """BGR, normalised, CHW: the image at the top left, black (as NanoDet pads) elsewhere."""
    canvas = np.empty((size, size, 3), dtype=np.float32)
    canvas[...] = -MEAN / STD
    bgr = np.asarray(resized, dtype=np.float32)[:, :, ::-1]
    canvas[: resized.height, : resized.width] = (bgr - MEAN) / STD
    return canvas.transpose(2, 0, 1)


def decode(scores, distances, size, threshold):
    """Candidate boxes [K, 4] (network pixels), scores [K] and classes [K] of one image: every
    (cell, class) scoring above ``threshold``, as NanoDet's multi-class post-processing."""
    boxes, kept_scores, classes = [], [], []
    for stride, cell_scores, cell_distances in zip(STRIDES, scores, distances, strict=True):
        cells, labels = np.nonzero(cell_scores > threshold)
        if not cells.size:
            continue
        logits = cell_distances[cells].reshape(-1, 4, BINS)
        weights = np.exp(logits - logits.max(axis=2, keepdims=True))
        sides = (weights @ np.arange(BINS, dtype=np.float32)) / weights.sum(axis=2) * stride
        columns = size // stride
        cy = (cells // columns + 0.5) * stride
        cx = (cells % columns + 0.5) * stride
        boxes.append(np.stack([cx - sides[:, 0], cy - sides[:, 1],
                               cx + sides[:, 2], cy + sides[:, 3]], axis=1))
        kept_scores.append(cell_scores[cells, labels])
        classes.append(labels)
    if not boxes:
        return (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))
    return (np.concatenate(boxes).astype(np.float32), np.concatenate(kept_scores),
            np.concatenate(classes).astype(np.int32))


def nms_per_class(boxes, scores, classes, iou_threshold):
    """postprocess's greedy NMS, one class never suppressing another: each class's boxes are
    moved to their own region of the plane (torchvision's batched_nms does the same)."""
    if not len(boxes):
        return np.zeros(0, dtype=np.int64)
    offsets = classes.astype(np.float32)[:, None] * (float(boxes.max()) + 1.0)
    return postprocess.nms(boxes + offsets, scores, iou_threshold)


class ObjectDetector:
    network_input_size = 0  # set by each version's model.py

    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.decoder = preprocess.Decoder(
            self.network_input_size, int(params.get("max_image_pixels", str(4096 * 4096))))
        self.network = params.get("network_model", "nanodet")
        self.version = int(args["model_version"])
        self.threshold = float(params.get("score_threshold", "0.35"))
        self.iou_threshold = float(params.get("nms_iou_threshold", "0.6"))
        self.max_rows = max(1, int(config.get("max_batch_size", 0)))
        boxes_config = pb_utils.get_output_config_by_name(config, "detection_boxes")
        self.max_detections = int(boxes_config["dims"][0])

    def execute(self, requests):
        responses = [None] * len(requests)
        pixels, letterboxes, owners = [], [], []
        for i, request in enumerate(requests):
            images = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            try:
                rows = [self._prepare(images[r].reshape(-1)[0], r)
                        for r in range(images.shape[0])]
            except preprocess.ImageRejected as exc:
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG))
                continue
            owners.append((i, len(pixels), len(rows)))
            pixels.extend(r[0] for r in rows)
            letterboxes.extend(r[1] for r in rows)
        if not owners:
            return responses
        try:
            outputs = self._infer(np.stack(pixels))
        except NetworkFailed as exc:
            for i, _, _ in owners:
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(exc), exc.code))
            return responses
        for i, start, count in owners:
            responses[i] = self._respond(outputs, letterboxes, start, count)
        return responses

    def _prepare(self, data, row):
        resized, (width, height) = self.decoder.decode(data, row)
        size = self.network_input_size
        return letterbox(resized, size), (size / max(width, height), width, height)

    def _infer(self, pixels):
        """The network's outputs for every row, in calls of at most max_batch_size rows."""
        parts = []
        for start in range(0, len(pixels), self.max_rows):
            request = pb_utils.InferenceRequest(
                model_name=self.network, model_version=self.version,
                requested_output_names=list(NETWORK_OUTPUTS),
                inputs=[pb_utils.Tensor("input", pixels[start:start + self.max_rows])],
                # The network may run on a GPU: its outputs are decoded here, on the CPU.
                preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0))
            response = request.exec()
            if response.has_error():
                error = response.error()
                raise NetworkFailed(f"{self.network} version {self.version}: {error.message()}",
                                    error.code())
            parts.append([pb_utils.get_output_tensor_by_name(response, name).as_numpy()
                          for name in NETWORK_OUTPUTS])
        return [np.concatenate(column) for column in zip(*parts, strict=True)]

    def _respond(self, outputs, letterboxes, start, count):
        n = len(STRIDES)
        num = np.zeros((count, 1), dtype=np.int32)
        out_boxes = np.zeros((count, self.max_detections, 4), dtype=np.float32)
        out_scores = np.zeros((count, self.max_detections), dtype=np.float32)
        out_classes = np.zeros((count, self.max_detections), dtype=np.int32)
        for row in range(count):
            index = start + row
            factor, width, height = letterboxes[index]
            boxes, scores, classes = decode([o[index] for o in outputs[:n]],
                                            [o[index] for o in outputs[n:]],
                                            self.network_input_size, self.threshold)
            boxes /= factor
            np.clip(boxes[:, 0::2], 0, width, out=boxes[:, 0::2])
            np.clip(boxes[:, 1::2], 0, height, out=boxes[:, 1::2])
            keep = nms_per_class(boxes, scores, classes, self.iou_threshold)
            keep = keep[: self.max_detections]
            k = len(keep)
            num[row, 0] = k
            out_boxes[row, :k] = boxes[keep]
            out_scores[row, :k] = scores[keep]
            out_classes[row, :k] = classes[keep]
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("num_detections", num),
            pb_utils.Tensor("detection_boxes", out_boxes),
            pb_utils.Tensor("detection_scores", out_scores),
            pb_utils.Tensor("detection_classes", out_classes),
        ])
