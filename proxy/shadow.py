"""Shadow traffic: a sample of a model's calls also runs on a candidate version, and the two
answers are compared; the caller only ever gets the primary answer.

The shadow call starts after the primary answer is ready, in its own task, so it never delays
or fails the caller. It skips the result cache and the caller's admission slot, and it is
bounded: at most the experiment's ``max_concurrency`` in flight, and none at all while every
upstream slot is taken by callers (at capacity the backend's work belongs to callers; a
shadow must never amplify an overload). Its work still shares the proxy's CPU and the
backend with the callers' calls: below capacity it costs them only that contention.

Agreement, per compared call: the share of the primary's detections that the candidate also
found (same class, IoU >= 0.5, each candidate box matched once), the difference in the number
of detections, and the mean score difference over matched pairs.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
from tritonclient.grpc import InferResult

from detect.v1 import detect_pb2

from .answers import build_response
from .errors import ProxyError
from .experiments import Experiments, Shadow
from .image_header import ImageInfo
from .models import DetectorModel, Image
from .telemetry import Telemetry

log = logging.getLogger(__name__)

MATCH_IOU = 0.5
SHADOW_VARIANT = "shadow"

# (the model at the candidate version, the image, seconds it may take) -> (result, row)
Send = Callable[[DetectorModel, Image, float], Awaitable[tuple[InferResult, int]]]


@dataclass(frozen=True)
class Agreement:
    matched: float  # share of the primary's detections the candidate found, in [0, 1]
    count_difference: int  # |candidate detections - primary detections|
    score_drift: float  # mean |score difference| over matched pairs (0 without pairs)


def _boxes(answer: detect_pb2.DetectResponse) -> np.ndarray:
    return np.array([[d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max]
                     for d in answer.detections], dtype=np.float64).reshape(-1, 4)


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], others[:, 0])
    y0 = np.maximum(box[1], others[:, 1])
    x1 = np.minimum(box[2], others[:, 2])
    y1 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def agreement(primary: detect_pb2.DetectResponse,
              candidate: detect_pb2.DetectResponse) -> Agreement:
    """How far the candidate's answer agrees with the primary's (both best first)."""
    difference = abs(len(candidate.detections) - len(primary.detections))
    if not primary.detections:
        return Agreement(0.0 if candidate.detections else 1.0, difference, 0.0)
    theirs = _boxes(candidate)
    classes = np.array([d.class_id for d in candidate.detections], dtype=np.int64)
    free = np.ones(len(theirs), dtype=bool)
    drifts = []
    for detection, box in zip(primary.detections, _boxes(primary), strict=True):
        if not free.any():
            break
        overlap = np.where(free & (classes == detection.class_id), _iou(box, theirs), 0.0)
        best = int(np.argmax(overlap))
        if overlap[best] >= MATCH_IOU:
            free[best] = False
            drifts.append(abs(detection.score - candidate.detections[best].score))
    return Agreement(len(drifts) / len(primary.detections), difference,
                     float(np.mean(drifts)) if drifts else 0.0)


class ShadowTraffic:
    def __init__(self, experiments: Experiments, send: Send, at_capacity: Callable[[], bool],
                 timeout_s: float, telemetry: Telemetry) -> None:
        self._experiments = experiments
        self._send = send
        self._at_capacity = at_capacity
        self._timeout_s = timeout_s
        self._telemetry = telemetry
        self._in_flight: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def offer(self, model: DetectorModel, image: Image, info: ImageInfo,
              primary: detect_pb2.DetectResponse) -> None:
        """Shadow this call if its model's experiment samples it."""
        experiment = self._experiments.by_model.get(model.name)
        shadow = experiment.shadow if experiment is not None else None
        if shadow is None or primary.model_version == shadow.version \
                or random.random() >= shadow.fraction:
            return
        labels = {"model": model.name, "version": shadow.version}
        if self._at_capacity():
            self._telemetry.shadow_calls.add(1, {**labels, "outcome": "skipped_at_capacity"})
            return
        if self._in_flight.get(model.name, 0) >= shadow.max_concurrency:
            self._telemetry.shadow_calls.add(1, {**labels, "outcome": "skipped_concurrency"})
            return
        self._in_flight[model.name] = self._in_flight.get(model.name, 0) + 1
        task = asyncio.get_running_loop().create_task(
            self._run(model, shadow, image, info, primary))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, model: DetectorModel, shadow: Shadow, image: Image, info: ImageInfo,
                   primary: detect_pb2.DetectResponse) -> None:
        labels = {"model": model.name, "version": shadow.version}
        try:
            result, row = await self._send(model.at(shadow.version, SHADOW_VARIANT), image,
                                           self._timeout_s)
            candidate = build_response(result, row, model, info)
        except ProxyError as exc:
            self._telemetry.shadow_calls.add(1, {**labels, "outcome": exc.code.name})
            log.debug("shadow call to %s version %s failed: %s", model.name, shadow.version,
                      exc.message)
            return
        except Exception:  # a shadow must never take anything else down
            self._telemetry.shadow_calls.add(1, {**labels, "outcome": "INTERNAL"})
            log.exception("shadow call to %s version %s failed", model.name, shadow.version)
            return
        finally:
            self._in_flight[model.name] -= 1
        found = agreement(primary, candidate)
        labels["primary_version"] = primary.model_version
        self._telemetry.shadow_calls.add(1, {"model": model.name, "version": shadow.version,
                                            "outcome": "OK"})
        self._telemetry.shadow_matched.record(found.matched, labels)
        self._telemetry.shadow_count_difference.record(found.count_difference, labels)
        self._telemetry.shadow_score_drift.record(found.score_drift, labels)
        if found.matched < 1.0:
            log.debug("shadow %s v%s vs v%s: matched %.2f, count difference %d, score drift "
                      "%.3f", model.name, shadow.version, primary.model_version, found.matched,
                      found.count_difference, found.score_drift)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
