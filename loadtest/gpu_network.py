"""The detector networks' throughput on a GPU, the one input of the capacity model this
project's machines cannot measure.

Runs each network of the model repository (CenterFace; any other ONNX detector present)
with onnxruntime's CUDA execution provider at batch sizes 1 to 32 and writes images per
second and latency per batch. The figure the capacity model takes
(`python -m detect_deploy.capacity --gpu-bench FILE`) is the throughput at the model's
max_batch_size, the largest batch Triton's dynamic batcher forms for it. On a machine
without a GPU it runs on the CPU provider (for its tests) and says so in its output; the
capacity model refuses such a file.

    # on the GPU host: the project (make venv models), then onnxruntime's CUDA build
    .venv/bin/pip uninstall -y onnxruntime && .venv/bin/pip install onnxruntime-gpu
    .venv/bin/python -m detect_loadtest.gpu_network --out gpu.json [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from detect_localtriton.model_config import load

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = ROOT / "model_repository"
BATCHES = (1, 2, 4, 8, 16, 32)
# network -> side of the square input its ensemble's preprocess step produces
NETWORKS = {"centerface": 512}


def _session(model: Path) -> ort.InferenceSession:
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                 if p in ort.get_available_providers()]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(model), options, providers=providers)


def measure(name: str, size: int, batches: tuple[int, ...], seconds: float) -> dict:
    session = _session(REPOSITORY / name / "1" / "model.onnx")
    input_name = session.get_inputs()[0].name
    rng = np.random.default_rng(0)
    rows: dict[str, dict[str, float]] = {}
    for batch in batches:
        pixels = rng.uniform(0, 255, (batch, 3, size, size)).astype(np.float32)
        for _ in range(3):
            session.run(None, {input_name: pixels})  # warm-up: CUDA graphs, allocations
        runs, started = 0, time.monotonic()
        while runs < 3 or time.monotonic() - started < seconds:
            session.run(None, {input_name: pixels})
            runs += 1
        elapsed = time.monotonic() - started
        rows[str(batch)] = {"images_per_s": round(runs * batch / elapsed, 1),
                            "ms_per_batch": round(elapsed * 1000 / runs, 3)}
    max_batch = load(REPOSITORY / name).max_batch_size
    serving = rows.get(str(max_batch)) or rows[str(max(b for b in batches if b <= max_batch))]
    return {"model": name, "input": [3, size, size], "provider": session.get_providers()[0],
            "max_batch_size": max_batch, "batches": rows,
            "serving_images_per_s": serving["images_per_s"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu.json"))
    parser.add_argument("--seconds", type=float, default=5.0, help="per batch size")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    args = parser.parse_args(argv)
    batches = tuple(int(b) for b in args.batches.split(","))
    results = [measure(name, size, batches, args.seconds) for name, size in NETWORKS.items()
               if (REPOSITORY / name / "1" / "model.onnx").is_file()]
    device = "cpu"
    if any(r["provider"] == "CUDAExecutionProvider" for r in results):
        import subprocess

        device = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                capture_output=True, text=True).stdout.strip() or "cuda"
    data = {"device": device, "onnxruntime": ort.__version__, "host": platform.node(),
            "networks": results}
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
