"""BASELINE: the CPU limit of this machine for CenterFace, with onnxruntime in-process.

The same model file the stack serves (model_repository/centerface/1/model.onnx), fed the
same 512x512 letterboxed image, run in a tight loop with no server, no copies and no
pre/post-processing: whatever the stack does on top can only lower its images per second.
Two layouts are tried, and the faster one is the limit: one session per core with one
thread each (how the backend runs instances), and one session using every core.

    python -m detect_loadtest.onnxruntime_inprocess --image build/testdata/coffee.png --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "model_repository" / "centerface" / "1" / "model.onnx"
SIZE = 512


def letterboxed(image_path: Path, size: int = SIZE) -> np.ndarray:
    """NCHW float32 0..255 RGB, aspect kept, padded to size x size (as the ensemble does)."""
    image = Image.open(image_path).convert("RGB")
    scale = size / max(image.size)
    resized = image.resize((max(1, round(image.width * scale)),
                            max(1, round(image.height * scale))))
    canvas = np.zeros((size, size, 3), dtype=np.float32)
    canvas[: resized.height, : resized.width] = np.asarray(resized, dtype=np.float32)
    return canvas.transpose(2, 0, 1)[None]


def _session(threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])


def _run_parallel(sessions: list[ort.InferenceSession], batch: np.ndarray, seconds: float) -> dict:
    name = sessions[0].get_inputs()[0].name
    for s in sessions:
        s.run(None, {name: batch})  # warm-up
    counts = [0] * len(sessions)
    stop = time.monotonic() + seconds

    def loop(i: int) -> None:
        while time.monotonic() < stop:
            sessions[i].run(None, {name: batch})
            counts[i] += len(batch)

    cpu0, wall0 = time.process_time(), time.monotonic()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(sessions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    images = sum(counts)
    return {"images": images, "images_per_s": round(images / wall, 2),
            "cpu_ms_per_image": round(cpu * 1000 / images, 2)}


def measure(image_path: Path, seconds: float, cores: int | None = None) -> dict:
    """Images per second of CenterFace alone on ``cores`` cores (all of them by default)."""
    cores = cores or len(os.sched_getaffinity(0))
    single = letterboxed(image_path)
    layouts = {
        f"{cores} sessions x 1 thread, batch 1": _run_parallel(
            [_session(1) for _ in range(cores)], single, seconds),
        f"1 session x {cores} threads, batch 8": _run_parallel(
            [_session(cores)], np.repeat(single, 8, axis=0), seconds),
    }
    best = max(layouts, key=lambda k: layouts[k]["images_per_s"])
    return {"cores": cores, "layouts": layouts, "best": best,
            "images_per_s": layouts[best]["images_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=ROOT / "build" / "testdata" / "coffee.png")
    parser.add_argument("--seconds", type=float, default=10.0, help="per layout")
    args = parser.parse_args()
    print(json.dumps(measure(args.image, args.seconds), indent=2))


if __name__ == "__main__":
    main()
