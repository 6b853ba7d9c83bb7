"""The detector networks' throughput on a GPU, the one input of the capacity model this
project's machines cannot measure.

Runs each network of the model repository (CenterFace; any other ONNX detector present)
at batch sizes 1 to 32 and writes images per second and milliseconds per batch, each call
from host memory to host memory: the input is copied to the GPU and the outputs back, as
Triton's onnxruntime backend does between the ensemble's CPU steps. The figure the capacity
model takes (`python -m detect_deploy.capacity --gpu-bench FILE`) is the throughput at the
model's max_batch_size, the largest batch Triton's dynamic batcher forms for it.

Two runtimes (`--runtime`):

- `onnxruntime` (default): onnxruntime's CUDA execution provider, what Triton's
  onnxruntime backend runs. On a machine without a GPU it runs on the CPU provider (for
  its tests) and says so in its output; the capacity model refuses such a file.
- `torch`: the ONNX file converted to PyTorch with onnx2torch and run on CUDA in fp32
  (cuDNN autotuning and TF32 convolutions, as onnxruntime's CUDA provider does by
  default), for a GPU host that has PyTorch but not onnxruntime's CUDA build. Before
  timing it checks the converted network against onnxruntime's CPU provider on one random
  batch-1 input and records the largest difference. Extra columns: fp32 with the tensors
  left on the GPU (`resident_*`: the network alone, no copies), and fp16 (`.half()`) when
  fp16's outputs agree with that reference within FP16_TOLERANCE. The sizing figure stays
  fp32: Triton serves the fp32 model as it is. Without CUDA it runs on the CPU (provider
  "torch-cpu"), which the capacity model refuses too.

loadtest/results/gpu/ holds the measurement the committed deploy/CAPACITY.md uses (the
torch runtime on an H100) and the command that produced it.

    # on the GPU host, onnxruntime: the project (make venv models), then onnxruntime's CUDA
    # build
    .venv/bin/pip uninstall -y onnxruntime && .venv/bin/pip install onnxruntime-gpu
    .venv/bin/python -m detect_loadtest.gpu_network --out gpu.json [--seconds 5]

    # on the GPU host, PyTorch: any Python with torch (CUDA), onnx, onnxruntime (the CPU
    # build is enough), numpy and onnx2torch, and the repository with its model files
    # (make models); the project's environment is not needed
    python3 loadtest/gpu_network.py --runtime torch --out gpu.json [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
import warnings
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = ROOT / "model_repository"
BATCHES = (1, 2, 4, 8, 16, 32)
# network -> side of the square input its ensemble's preprocess step produces
NETWORKS = {"centerface": 512}
RUNTIMES = ("onnxruntime", "torch")
WARM_UP = 3  # calls before timing: allocations, cuDNN's algorithm search for the shape
# fp16 agrees with the fp32 reference when, for every output, its largest absolute difference
# is at most this fraction of max(1, the output's largest absolute value).
FP16_TOLERANCE = 0.02

Timing = dict[str, float]


def max_batch_size(name: str) -> int:
    """The network's max_batch_size in its config.pbtxt, read as Triton reads it where the
    project's environment is installed, else (a bare PyTorch host) from the text."""
    try:
        from detect_localtriton.model_config import load
    except ImportError:
        pass
    else:
        return load(REPOSITORY / name).max_batch_size
    config = REPOSITORY / name / "config.pbtxt"
    match = re.search(r"^\s*max_batch_size\s*:\s*(\d+)", config.read_text(), re.MULTILINE)
    if match is None:
        raise SystemExit(f"{config}: no max_batch_size")
    return int(match[1])


def _time(call: Callable[[], object], batch: int, seconds: float,
          synchronize: Callable[[], None] = lambda: None) -> Timing:
    for _ in range(WARM_UP):
        call()
    synchronize()
    runs, started = 0, time.monotonic()
    while runs < 3 or time.monotonic() - started < seconds:
        call()
        runs += 1
    synchronize()
    elapsed = time.monotonic() - started
    return {"images_per_s": round(runs * batch / elapsed, 1),
            "ms_per_batch": round(elapsed * 1000 / runs, 3)}


def _inputs(batches: Sequence[int], size: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(0)
    return {b: rng.uniform(0, 255, (b, 3, size, size)).astype(np.float32) for b in batches}


def _session(model: Path, providers: Sequence[str]) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(model), options,
                                providers=[p for p in providers
                                           if p in ort.get_available_providers()])


def _row(name: str, size: int, provider: str, runtime: str, max_batch: int,
         rows: dict[str, Timing]) -> dict[str, Any]:
    serving = rows.get(str(max_batch)) or rows[str(max(int(b) for b in rows
                                                       if int(b) <= max_batch))]
    return {"model": name, "input": [3, size, size], "provider": provider, "runtime": runtime,
            "precision": "fp32", "max_batch_size": max_batch, "batches": rows,
            "serving_images_per_s": serving["images_per_s"]}


def measure(name: str, size: int, batches: tuple[int, ...], seconds: float) -> dict[str, Any]:
    """onnxruntime: its CUDA execution provider where installed, else its CPU provider."""
    session = _session(REPOSITORY / name / "1" / "model.onnx",
                       ("CUDAExecutionProvider", "CPUExecutionProvider"))
    input_name = session.get_inputs()[0].name

    def call(pixels: np.ndarray) -> Callable[[], object]:
        return lambda: session.run(None, {input_name: pixels})

    rows = {str(b): _time(call(pixels), b, seconds)
            for b, pixels in _inputs(batches, size).items()}
    return _row(name, size, session.get_providers()[0], "onnxruntime", max_batch_size(name),
                rows)


def _max_abs(outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray],
             names: Sequence[str]) -> dict[str, float]:
    diffs = {}
    for name, got, want in zip(names, outputs, reference, strict=True):
        if got.shape != want.shape:
            raise SystemExit(f"output {name}: shape {got.shape}, onnxruntime's {want.shape}")
        diffs[name] = float(np.max(np.abs(got.astype(np.float64) - want)))
    return diffs


def _tf32_convolutions(torch: Any) -> bool | None:
    """Whether cuDNN may use TF32 in fp32 convolutions (None: this PyTorch does not say)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return bool(torch.backends.cudnn.allow_tf32)
    except Exception:
        return None


def measure_torch(name: str, size: int, batches: tuple[int, ...],
                  seconds: float) -> dict[str, Any]:
    """PyTorch: the ONNX file converted by onnx2torch, on CUDA where available."""
    import torch
    from onnx2torch import convert

    path = REPOSITORY / name / "1" / "model.onnx"
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    # What onnxruntime's CUDA provider does by default: an exhaustive cuDNN algorithm
    # search per shape, TF32 in fp32 convolutions (PyTorch's default for cuDNN too).
    torch.backends.cudnn.benchmark = True
    fp32 = convert(str(path)).to(device).eval()
    fp16 = convert(str(path)).to(device).eval().half()

    def infer(model: torch.nn.Module, pixels: np.ndarray, half: bool) -> list[np.ndarray]:
        x = torch.from_numpy(pixels).to(device)
        out = model(x.half() if half else x)
        out = list(out) if isinstance(out, (list, tuple)) else [out]
        return [o.float().cpu().numpy() for o in out]

    inputs = _inputs(sorted({1, *batches}), size)
    reference_session = _session(path, ("CPUExecutionProvider",))
    names = [o.name for o in reference_session.get_outputs()]
    reference = [np.asarray(r, dtype=np.float64) for r in reference_session.run(
        None, {reference_session.get_inputs()[0].name: inputs[1]})]
    limits = {n: FP16_TOLERANCE * max(1.0, float(np.max(np.abs(r))))
              for n, r in zip(names, reference, strict=True)}
    with torch.inference_mode():
        fp32_diff = _max_abs(infer(fp32, inputs[1], False), reference, names)
        try:
            fp16_diff: dict[str, float] | None = _max_abs(infer(fp16, inputs[1], True),
                                                          reference, names)
            fp16_error = ""
        except (RuntimeError, ValueError) as exc:  # an operator without an fp16 kernel
            fp16_diff, fp16_error = None, repr(exc)
        fp16_agrees = fp16_diff is not None and all(d <= limits[n]
                                                    for n, d in fp16_diff.items())
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        rows: dict[str, Timing] = {}

        def call(model: torch.nn.Module, pixels: np.ndarray, half: bool) -> Callable[[], object]:
            return lambda: infer(model, pixels, half)

        def resident(pixels: np.ndarray) -> Callable[[], object]:
            x = torch.from_numpy(pixels).to(device)
            return lambda: fp32(x)

        for b in batches:
            rows[str(b)] = _time(call(fp32, inputs[b], False), b, seconds, sync)
            alone = _time(resident(inputs[b]), b, seconds, sync)
            rows[str(b)].update(resident_images_per_s=alone["images_per_s"],
                                resident_ms_per_batch=alone["ms_per_batch"])
            if fp16_agrees:
                half = _time(call(fp16, inputs[b], True), b, seconds, sync)
                rows[str(b)].update(fp16_images_per_s=half["images_per_s"],
                                    fp16_ms_per_batch=half["ms_per_batch"])
    row = _row(name, size, "torch-cuda" if cuda else "torch-cpu", "torch",
               max_batch_size(name), rows)
    serving = rows.get(str(row["max_batch_size"]), {})
    if "fp16_images_per_s" in serving:
        row["serving_fp16_images_per_s"] = serving["fp16_images_per_s"]
    row["tf32"] = cuda and _tf32_convolutions(torch)
    row["agreement"] = {
        "reference": f"onnxruntime {ort.__version__} CPUExecutionProvider",
        "input": "uniform random 0..255, batch 1", "max_abs_diff_fp32": fp32_diff,
        "max_abs_diff_fp16": fp16_diff, "fp16_limit": limits, "fp16_agrees": fp16_agrees,
        **({"fp16_error": fp16_error} if fp16_error else {})}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu.json"))
    parser.add_argument("--seconds", type=float, default=5.0, help="per batch size")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime",
                        help="onnxruntime (its CUDA provider; default) or torch (onnx2torch)")
    args = parser.parse_args(argv)
    batches = tuple(int(b) for b in args.batches.split(","))
    run = measure_torch if args.runtime == "torch" else measure
    results = [run(name, size, batches, args.seconds) for name, size in NETWORKS.items()
               if (REPOSITORY / name / "1" / "model.onnx").is_file()]
    data: dict[str, Any] = {"device": "cpu", "runtime": args.runtime,
                            "onnxruntime": ort.__version__, "host": platform.node()}
    if args.runtime == "torch":
        import torch

        data.update(torch=torch.__version__, onnx2torch=metadata.version("onnx2torch"))
        if torch.cuda.is_available():
            data["device"] = torch.cuda.get_device_name(0)
    elif any(r["provider"] == "CUDAExecutionProvider" for r in results):
        import subprocess

        data["device"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True).stdout.strip() or "cuda"
    data["networks"] = results
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
