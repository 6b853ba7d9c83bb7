"""BASELINE: the CPU limit of this machine for face_detector, its whole pipeline in-process.

The ensemble's own steps, with the same code and thread settings the backend runs them
with, in one process in a tight loop, one image at a time and nothing else: the
repository's ``preprocess`` model (decode, orient, letterbox), CenterFace in onnxruntime
(one intra-op thread, as ``intra_op_thread_count`` configures the backend), and the
``postprocess`` model (heatmap decode, NMS). No server, no gRPC, no copies between
processes. It runs one image at a time and in batches of the network's max_batch_size (as
the backend's dynamic batcher forms them at best), and the cheaper of the two is the limit.
Each step's CPU per image is measured on its own; the limit on N cores is N times the
single-core rate (perfect scaling: an upper bound the stack can only approach).

    python -m detect_loadtest.pipeline_limit --image build/testdata/phone-12mp.jpg --seconds 10
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnxruntime as ort

from detect_localtriton import triton_python_backend_utils as pb_utils
from detect_localtriton.backends.python_model import config_as_json
from detect_localtriton.model_config import load, string_parameter

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = ROOT / "model_repository"
STEPS = ("preprocess", "network", "postprocess")


def repository_module(name: str) -> ModuleType:
    """The repository's ``model.py`` of ``name``, imported as Triton's Python backend does."""
    sys.modules.setdefault("triton_python_backend_utils", pb_utils)  # what Triton's stub provides
    spec = importlib.util.spec_from_file_location(f"pipeline_{name}",
                                                  REPOSITORY / name / "1" / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _python_model(name: str) -> Any:
    """The repository's ``model.py`` of ``name``, initialised as the Python backend does."""
    model = repository_module(name).TritonPythonModel()
    config = load(REPOSITORY / name)
    model.initialize({"model_config": config_as_json(config), "model_repository":
                      str(REPOSITORY / name), "model_version": "1", "model_name": name})
    return model


def _network(name: str = "centerface") -> ort.InferenceSession:
    config = load(REPOSITORY / name)
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(string_parameter(config, "intra_op_thread_count", "1"))
    options.inter_op_num_threads = int(string_parameter(config, "inter_op_thread_count", "1"))
    options.log_severity_level = 3
    return ort.InferenceSession(str(REPOSITORY / name / "1" / "model.onnx"), options,
                                providers=["CPUExecutionProvider"])


def _outputs(response: Any) -> dict[str, np.ndarray]:
    if response.has_error():
        raise RuntimeError(response.error().message())
    return {t.name(): t.as_numpy() for t in response.output_tensors()}


class Pipeline:
    """face_detector's three steps, called as the ensemble calls them."""

    def __init__(self) -> None:
        self.pre = _python_model("preprocess")
        self.post = _python_model("postprocess")
        self.session = _network()
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, images: list[bytes], spent: dict[str, float]) -> dict[str, np.ndarray]:
        """One batch of images through every step; adds each step's CPU seconds to
        ``spent``."""
        t0 = time.process_time()
        pre = _outputs(self.pre.execute([pb_utils.InferenceRequest(
            [pb_utils.Tensor("IMAGE", np.array([[i] for i in images], dtype=np.object_))],
            ["input", "letterbox"], "", None)])[0])
        t1 = time.process_time()
        net = dict(zip(self.output_names, self.session.run(None, {"input": pre["input"]}),
                       strict=True))
        t2 = time.process_time()
        post = _outputs(self.post.execute([pb_utils.InferenceRequest(
            [pb_utils.Tensor(n, net[n]) for n in ("heatmap", "scale", "offset")]
            + [pb_utils.Tensor("letterbox", pre["letterbox"])], [], "", None)])[0])
        t3 = time.process_time()
        for step, seconds in zip(STEPS, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            spent[step] += seconds
        return post


def _layout(pipeline: Pipeline, image: bytes, batch: int, seconds: float) -> dict:
    images = [image] * batch
    spent = dict.fromkeys(STEPS, 0.0)
    for _ in range(2):
        pipeline.run(images, spent)  # warm-up
    spent = dict.fromkeys(STEPS, 0.0)
    runs = 0
    cpu0, wall0 = time.process_time(), time.monotonic()
    while runs < 2 or time.monotonic() - wall0 < seconds:
        pipeline.run(images, spent)
        runs += 1
    count = runs * batch
    total_ms = (time.process_time() - cpu0) * 1000 / count
    return {"batch": batch, "images": count,
            "cpu_ms_per_image": {**{step: round(s * 1000 / count, 3)
                                    for step, s in spent.items()},
                                 "total": round(total_ms, 3)}}


def measure(image_path: Path, seconds: float, cores: int | None = None) -> dict:
    """CPU per image of each step and the pipeline's images per second on ``cores`` cores,
    for the cheaper of batch 1 and the network's max_batch_size."""
    cores = cores or len(os.sched_getaffinity(0))
    image = image_path.read_bytes()
    pipeline = Pipeline()
    batches = sorted({1, max(1, load(REPOSITORY / "centerface").max_batch_size)})
    layouts = [_layout(pipeline, image, b, seconds / len(batches)) for b in batches]
    best = min(layouts, key=lambda layout: layout["cpu_ms_per_image"]["total"])
    total_ms = best["cpu_ms_per_image"]["total"]
    return {"image": image_path.name, "bytes": len(image), "cores": cores,
            "layouts": layouts, "batch": best["batch"], "images": best["images"],
            "cpu_ms_per_image": best["cpu_ms_per_image"],
            "images_per_s_per_core": round(1000 / total_ms, 2),
            "limit_images_per_s": round(cores * 1000 / total_ms, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=ROOT / "build" / "testdata" / "coffee.png")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(json.dumps(measure(args.image, args.seconds), indent=2))


if __name__ == "__main__":
    main()
