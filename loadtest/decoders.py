"""JPEG decoders for the preprocessing step, compared by CPU per image and by accuracy.

Why: `model_repository/preprocess/1/model.py` decodes every image with Pillow at full
resolution and only then shrinks it to the network input (512 for CenterFace, 416 for
NanoDet). For a 12 MP phone photo that is most of the step's CPU. libjpeg can decode at
1/2, 1/4, 1/8 (libjpeg-turbo: any M/8) of the size instead, skipping most of the inverse
DCT and colour conversion. Which library to use for that is decided by the numbers here.

What: for each phone-like JPEG (`detect_stack.phone_photos`: 12, 4, 1 MP) and each network
size, the CPU (``time.process_time``, one thread, after a warm-up) of producing the RGB
image letterboxed-resized to the network size (longest side = size, aspect kept, uint8
HxWx3), with each alternative below; its accuracy against today's full decode at the same
size (mean and max absolute pixel difference, PSNR); and, at 512, the IoU of the best
CenterFace box (the repository's model and its own postprocess `decode` and `nms`) against
the best box found on today's full decode. Every alternative reads the header and the EXIF
orientation with Pillow (preprocess validates with Pillow anyway), decodes in stored
orientation and turns the small result upright, so that none of them is credited with
skipping work the service needs. Optional decoders that are not importable are reported as
"not installed"; Pillow is always measured.

How to run (the optional decoders live outside the project venv; PyTurboJPEG 1.x because
Debian 12's libturbojpeg0 is libjpeg-turbo 2.1 and PyTurboJPEG 2 needs 3.0):

    apt-get install -y libturbojpeg0
    .venv/bin/python -m pip install --no-deps --target build/decoders \\
        simplejpeg 'PyTurboJPEG<2' opencv-python-headless
    PYTHONPATH=build/decoders .venv/bin/python -m detect_loadtest.decoders

It writes ``decoders.json`` and ``decoders.md`` into ``--out`` (loadtest/results/decoders).
"""

from __future__ import annotations

import argparse
import ctypes.util
import functools
import io
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps, features

from detect_loadtest import pipeline_limit, results_file
from detect_localtriton.model_config import load as load_config
from detect_localtriton.model_config import string_parameter
from detect_stack import phone_photos
from detect_stack.reference_centerface import iou as reference_iou

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "model_repository" / "centerface" / "1" / "model.onnx"
TESTDATA = ROOT / "build" / "testdata"
OUT = ROOT / "loadtest" / "results" / "decoders"
SIZES = (512, 416)
FACE_SIZE = 512  # CenterFace's network input in the face_detector ensemble
BASELINE = "pillow-full"
BILINEAR = Image.Resampling.BILINEAR
# Pillow allows no smaller gap; after draft the remaining ratio is below 2, so this tells
# whether the reduce step can still do anything there.
REDUCING_GAP = 1.0
# Pillow's own EXIF orientation -> transpose table (ImageOps.exif_transpose).
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

Info = dict[str, Any]
# encoded image, network size, optional dict to note the decoded size in -> HxWx3 uint8 RGB
Decode = Callable[[bytes, int, Info | None], np.ndarray]


def fit(width: int, height: int, size: int) -> tuple[int, int]:
    """The letterboxed size inside ``size`` x ``size``, rounded as preprocess rounds it."""
    scale = size / max(width, height)
    return (max(1, min(size, round(width * scale))), max(1, min(size, round(height * scale))))


def _orientation(image: Image.Image) -> int:
    value = image.getexif().get(ExifTags.Base.Orientation, 1)
    return value if isinstance(value, int) else 1


def _upright(image: Image.Image, orientation: int) -> np.ndarray:
    method = TRANSPOSE.get(orientation)
    return np.asarray(image if method is None else image.transpose(method))


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _note(info: Info | None, decoded: tuple[int, int], **extra: Any) -> None:
    if info is not None:
        info["decoded_size"] = list(decoded)
        info.update(extra)


# ---------------------------------------------------------------------------- alternatives

def pillow_full(data: bytes, size: int, info: Info | None = None) -> np.ndarray:
    """Today's path, as preprocess runs it: full decode, exif_transpose (a copy), resize."""
    image = _rgb(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    _note(info, image.size)
    return np.asarray(image.resize(fit(*image.size, size), BILINEAR))


def pillow_full_in_place(data: bytes, size: int, info: Info | None = None) -> np.ndarray:
    """Today's path without the full-size copy: exif_transpose(in_place=True)."""
    image: Image.Image = Image.open(io.BytesIO(data))
    ImageOps.exif_transpose(image, in_place=True)
    image = _rgb(image)
    _note(info, image.size)
    return np.asarray(image.resize(fit(*image.size, size), BILINEAR))


def _pillow_draft(data: bytes, size: int, info: Info | None,
                  reducing_gap: float | None) -> np.ndarray:
    image: Image.Image = Image.open(io.BytesIO(data))
    orientation = _orientation(image)
    target = fit(*image.size, size)  # in stored orientation, as draft wants it
    image.draft("RGB", target)  # smallest of 1/1, 1/2, 1/4, 1/8 that stays >= target
    image = _rgb(image)
    _note(info, image.size)
    return _upright(image.resize(target, BILINEAR, reducing_gap=reducing_gap), orientation)


def pillow_draft(data: bytes, size: int, info: Info | None = None) -> np.ndarray:
    return _pillow_draft(data, size, info, None)


def pillow_draft_gap(data: bytes, size: int, info: Info | None = None) -> np.ndarray:
    return _pillow_draft(data, size, info, REDUCING_GAP)


def _header(data: bytes) -> tuple[int, int, int]:
    image: Image.Image = Image.open(io.BytesIO(data))
    return image.width, image.height, _orientation(image)


def load_simplejpeg() -> tuple[Decode, str]:
    import simplejpeg

    def decode(data: bytes, size: int, info: Info | None = None) -> np.ndarray:
        width, height, orientation = _header(data)
        target = fit(width, height, size)
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=target[0],
                                        min_height=target[1])
        _note(info, (pixels.shape[1], pixels.shape[0]))
        return _upright(Image.fromarray(pixels).resize(target, BILINEAR), orientation)

    return decode, f"simplejpeg {simplejpeg.__version__} (bundles libjpeg-turbo)"


def _turbojpeg_library() -> str:
    """The libturbojpeg file this process loaded, and its Debian package version if any."""
    path = ""
    try:
        with open("/proc/self/maps") as maps:
            path = next((line.split()[-1] for line in maps if "libturbojpeg" in line), "")
    except OSError:
        pass
    path = os.path.realpath(path) if path else (ctypes.util.find_library("turbojpeg") or "?")
    try:
        package = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "libturbojpeg0"],
                                 capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        package = ""
    return path + (f", Debian libturbojpeg0 {package}" if package else "")


def load_turbojpeg() -> tuple[Decode, str]:
    import turbojpeg

    jpeg = turbojpeg.TurboJPEG()  # raises when the system library is missing
    factors: list[tuple[int, int]] = sorted(jpeg.scaling_factors, key=lambda f: f[0] / f[1])

    def scaled(dim: int, factor: tuple[int, int]) -> int:
        return (dim * factor[0] + factor[1] - 1) // factor[1]  # TJSCALED

    def decode(data: bytes, size: int, info: Info | None = None) -> np.ndarray:
        width, height, orientation = _header(data)
        target = fit(width, height, size)
        factor = next((f for f in factors
                       if scaled(width, f) >= target[0] and scaled(height, f) >= target[1]),
                      (1, 1))
        pixels = jpeg.decode(data, pixel_format=turbojpeg.TJPF_RGB, scaling_factor=factor)
        _note(info, (pixels.shape[1], pixels.shape[0]), scaling_factor=f"{factor[0]}/{factor[1]}")
        return _upright(Image.fromarray(pixels).resize(target, BILINEAR), orientation)

    return decode, f"PyTurboJPEG {turbojpeg.__version__} with {_turbojpeg_library()}"


def load_opencv() -> tuple[Decode, str]:
    import cv2

    cv2.setNumThreads(1)
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2,
             4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}

    def decode(data: bytes, size: int, info: Info | None = None) -> np.ndarray:
        width, height, orientation = _header(data)
        target = fit(width, height, size)
        reduction = next(r for r in (8, 4, 2, 1)
                         if -(-width // r) >= target[0] and -(-height // r) >= target[1])
        # Orientation is applied below, from the same EXIF tag as every other alternative.
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8),
                           flags[reduction] | cv2.IMREAD_IGNORE_ORIENTATION)
        _note(info, (bgr.shape[1], bgr.shape[0]), reduction=reduction)
        # Channel order does not matter to the resize: convert the small image.
        rgb = cv2.cvtColor(cv2.resize(bgr, target, interpolation=cv2.INTER_LINEAR),
                           cv2.COLOR_BGR2RGB)
        return rgb if orientation == 1 else _upright(Image.fromarray(rgb), orientation)

    jpeg = next((line.split(":", 1)[1].strip() for line in cv2.getBuildInformation().splitlines()
                 if line.strip().startswith("JPEG:")), "?")
    return decode, f"OpenCV {cv2.__version__} (JPEG: {jpeg}), cv2.setNumThreads(1)"


def _pillow_version() -> str:
    return (f"Pillow {Image.__version__} (libjpeg-turbo "
            f"{features.version('libjpeg_turbo') or '?'})")


@dataclass(frozen=True)
class Alternative:
    name: str
    description: str
    package: str  # what to install when it is missing
    load: Callable[[], tuple[Decode, str]]


def _fixed(decode: Decode) -> Callable[[], tuple[Decode, str]]:
    return lambda: (decode, _pillow_version())


ALTERNATIVES = (
    Alternative(BASELINE, "Pillow full decode, exif_transpose, convert, resize BILINEAR "
                "(today's preprocess)", "Pillow", _fixed(pillow_full)),
    Alternative("pillow-full-in-place", "as today, exif_transpose(in_place=True): no "
                "full-size copy", "Pillow", _fixed(pillow_full_in_place)),
    Alternative("pillow-draft", 'Pillow draft("RGB", target) (1/2, 1/4, 1/8 DCT scaling), '
                "resize BILINEAR", "Pillow", _fixed(pillow_draft)),
    Alternative("pillow-draft-gap", f"as pillow-draft, resize(reducing_gap={REDUCING_GAP}); "
                "its reduce() acts only where draft leaves a ratio >= 2 (over 16x the target)",
                "Pillow", _fixed(pillow_draft_gap)),
    Alternative("simplejpeg", "simplejpeg decode_jpeg(min_width, min_height) (M/8 DCT "
                "scaling), Pillow resize BILINEAR", "simplejpeg", load_simplejpeg),
    Alternative("turbojpeg", "PyTurboJPEG decode(scaling_factor = smallest M/8 >= target), "
                "Pillow resize BILINEAR", "PyTurboJPEG + libturbojpeg0", load_turbojpeg),
    Alternative("opencv", "cv2.imdecode(IMREAD_REDUCED_COLOR_2/4/8), cv2.resize INTER_LINEAR, "
                "BGR->RGB", "opencv-python-headless", load_opencv),
)


@dataclass
class Loaded:
    alternative: Alternative
    decode: Decode | None = None
    version: str = ""
    reason: str = ""

    def summary(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.alternative.name,
                                 "description": self.alternative.description}
        if self.decode is None:
            entry.update(status="not installed", package=self.alternative.package,
                         reason=self.reason)
        else:
            entry.update(status="measured", version=self.version)
        return entry


def load(alternative: Alternative) -> Loaded:
    try:
        decode, version = alternative.load()
    except (ImportError, OSError, RuntimeError) as exc:  # module or system library missing
        return Loaded(alternative, reason=f"{type(exc).__name__}: {exc}")
    return Loaded(alternative, decode, version)


# ---------------------------------------------------------------------------- measurement

def cpu_per_image(call: Callable[[], object], seconds: float, min_calls: int = 3
                  ) -> tuple[float, float, int]:
    """CPU and wall milliseconds per call, over at least ``seconds`` of CPU time."""
    calls = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    while True:
        call()
        calls += 1
        cpu = time.process_time() - cpu0
        if cpu >= seconds and calls >= min_calls:
            break
    wall = time.perf_counter() - wall0
    return cpu * 1000 / calls, wall * 1000 / calls, calls


def _psnr(mse: float) -> float | None:
    return None if mse == 0 else round(10 * math.log10(255.0 ** 2 / mse), 2)


def lanczos(data: bytes, size: int) -> np.ndarray:
    """A quality reference, not a candidate: full decode, upright, Lanczos resize."""
    image = _rgb(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    return np.asarray(image.resize(fit(*image.size, size), Image.Resampling.LANCZOS))


def accuracy(candidate: np.ndarray, reference: np.ndarray,
             quality: np.ndarray | None = None) -> dict[str, Any]:
    """Pixel differences to ``reference`` (today's output), PSNR to the ``quality`` image."""
    if candidate.shape != reference.shape:
        return {"error": f"shape {candidate.shape} != {reference.shape}"}
    diff = np.abs(candidate.astype(np.int16) - reference.astype(np.int16))
    mse = float(np.mean(diff.astype(np.float64) ** 2))
    found = {"mean_abs_diff": round(float(diff.mean()), 3), "max_abs_diff": int(diff.max()),
             "psnr_db": _psnr(mse), "identical": mse == 0}
    if quality is not None and quality.shape == candidate.shape:
        error = candidate.astype(np.float64) - quality.astype(np.float64)
        found["psnr_vs_lanczos_db"] = _psnr(float(np.mean(error ** 2)))
    return found


@dataclass
class Faces:
    """CenterFace as the ensemble runs it: onnxruntime, then postprocess's decode and nms."""

    model: Path
    session: Any = None
    post: ModuleType | None = None
    threshold: float = 0.5
    iou_threshold: float = 0.3
    outputs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.model), options,
                                            providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.post = pipeline_limit.repository_module("postprocess")
        config = load_config(pipeline_limit.REPOSITORY / "postprocess")
        self.threshold = float(string_parameter(config, "score_threshold",
                                                str(self.threshold)))
        self.iou_threshold = float(string_parameter(config, "nms_iou_threshold",
                                                    str(self.iou_threshold)))

    def best(self, pixels: np.ndarray, size: int) -> dict[str, Any]:
        """The highest-scoring face after NMS, in network-input pixels, and the face count."""
        assert self.post is not None
        canvas = np.zeros((1, 3, size, size), dtype=np.float32)  # zero padded, top-left
        canvas[0, :, : pixels.shape[0], : pixels.shape[1]] = pixels.transpose(2, 0, 1)
        name = self.session.get_inputs()[0].name
        out = dict(zip(self.outputs, self.session.run(None, {name: canvas}), strict=True))
        boxes, scores = self.post.decode(out["heatmap"][0], out["scale"][0], out["offset"][0],
                                         self.threshold, size, size)
        keep = self.post.nms(boxes, scores, self.iou_threshold)
        if not len(keep):
            return {"count": 0, "best_box": None, "best_score": None}
        return {"count": len(keep), "best_box": [round(float(v), 2) for v in boxes[keep[0]]],
                "best_score": round(float(scores[keep[0]]), 4)}


def iou(a: Sequence[float] | None, b: Sequence[float] | None) -> float | None:
    if a is None or b is None:
        return None
    return round(reference_iou(np.asarray(a), np.asarray(b)), 4)


def measure(photos: dict[str, bytes], sizes: Sequence[int], loaded: Sequence[Loaded],
            seconds: float, rounds: int, model: Path | None) -> list[dict[str, Any]]:
    """One row per photo, size and installed alternative."""
    active = [(entry.alternative.name, entry.decode) for entry in loaded if entry.decode]
    rows: list[dict[str, Any]] = []
    outputs: dict[tuple[str, int, str], np.ndarray] = {}
    for photo, data in photos.items():
        for size in sizes:
            cases: list[tuple[dict[str, Any], Callable[[], object]]] = []
            for name, decode in active:
                info: Info = {}
                outputs[photo, size, name] = decode(data, size, info)  # warm-up, kept
                decode(data, size, None)
                row = {"photo": photo, "size": size, "alternative": name, **info,
                       "output_size": [outputs[photo, size, name].shape[1],
                                       outputs[photo, size, name].shape[0]],
                       "cpu_ms_rounds": [], "wall_ms_rounds": [], "calls": 0}
                cases.append((row, functools.partial(decode, data, size, None)))
            # Rounds interleave the alternatives, so that a neighbour's burst of load or a
            # frequency change spreads over all of them instead of landing on one.
            for _ in range(rounds):
                for row, call in cases:
                    cpu_ms, wall_ms, calls = cpu_per_image(call, seconds / rounds)
                    row["cpu_ms_rounds"].append(round(cpu_ms, 3))
                    row["wall_ms_rounds"].append(round(wall_ms, 3))
                    row["calls"] += calls
            for row, _ in cases:
                row["cpu_ms_per_image"] = round(statistics.median(row["cpu_ms_rounds"]), 3)
                row["wall_ms_per_image"] = round(statistics.median(row["wall_ms_rounds"]), 3)
                rows.append(row)
    # Accuracy and faces after every timing, so that no model thread runs during them.
    faces = Faces(model) if model is not None and FACE_SIZE in sizes else None
    best: dict[tuple[str, str], dict[str, Any]] = {}
    quality = {(p, s): lanczos(photos[p], s) for p in photos for s in sizes}
    for row in rows:
        key = (row["photo"], row["size"])
        reference = outputs.get((*key, BASELINE))
        pixels = outputs[(*key, row["alternative"])]
        baseline_cpu = next((r["cpu_ms_per_image"] for r in rows if r["photo"] == key[0]
                             and r["size"] == key[1] and r["alternative"] == BASELINE), None)
        if baseline_cpu:
            row["speedup_vs_full"] = round(baseline_cpu / row["cpu_ms_per_image"], 2)
        if reference is not None:
            row["accuracy_vs_full"] = accuracy(pixels, reference, quality[key])
        if faces is not None and row["size"] == FACE_SIZE:
            found = faces.best(pixels, FACE_SIZE)
            best[row["photo"], row["alternative"]] = found
            row["faces"] = found
    for row in rows:
        if "faces" in row:
            full = best.get((row["photo"], BASELINE))
            row["faces"]["best_box_iou_vs_full"] = iou(
                row["faces"]["best_box"], full["best_box"] if full else None)
    return rows


# ---------------------------------------------------------------------------- report

def versions(loaded: Sequence[Loaded]) -> dict[str, str]:
    import onnxruntime

    found = {"python": platform.python_version(), "numpy": np.__version__,
             "Pillow": _pillow_version(), "onnxruntime": onnxruntime.__version__}
    for entry in loaded:
        if entry.alternative.package != "Pillow":
            found[entry.alternative.name] = entry.version or "not installed"
    return found


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render(data: dict[str, Any]) -> str:
    rows = data["results"]
    photos = list(dict.fromkeys(r["photo"] for r in rows))
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    names = [a["name"] for a in data["alternatives"] if a["status"] == "measured"]
    by = {(r["alternative"], r["photo"], r["size"]): r for r in rows}
    cols = [(p, s) for s in sizes for p in photos]
    lines = [
        "# JPEG decoders for preprocess",
        "",
        f"Command: `{data['command']}`",
        "",
        f"CPU per image (`time.process_time`, one thread, median of {data['rounds']} "
        f"interleaved rounds, {data['seconds']} s of CPU per photo, size and alternative) "
        "to produce the letterboxed uint8 RGB image, longest side = network size, header "
        "and EXIF orientation read with Pillow. "
        f"Machine: {data['environment']['cpu']}.",
        "",
        "| alternative | " + " | ".join(f"{p.removesuffix('.jpg')} @{s} ms" for p, s in cols)
        + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for name in names:
        cells = []
        for p, s in cols:
            r = by.get((name, p, s))
            cells.append("–" if r is None else f"{r['cpu_ms_per_image']:.1f}"
                         + (f" ({r['speedup_vs_full']:.1f}x)" if "speedup_vs_full" in r
                            and name != BASELINE else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Accuracy against {BASELINE} at the same size, worst over the photos; PSNR vs "
        "Lanczos: against a full decode resized with Lanczos (a quality reference, higher is "
        f"closer); face IoU: best CenterFace box against {BASELINE}'s best box "
        f"(at {FACE_SIZE}).",
        "",
        "| alternative | size | decoded sizes | mean abs diff | max abs diff | min PSNR dB "
        "| min PSNR vs Lanczos dB | min face IoU |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        for s in sizes:
            mine = [by[name, p, s] for p in photos if (name, p, s) in by]
            acc = [r["accuracy_vs_full"] for r in mine if "mean_abs_diff"
                   in r.get("accuracy_vs_full", {})]
            psnr = [a["psnr_db"] for a in acc if a["psnr_db"] is not None]
            hq = [a["psnr_vs_lanczos_db"] for a in acc if a.get("psnr_vs_lanczos_db")]
            ious = [r["faces"]["best_box_iou_vs_full"] for r in mine if "faces" in r
                    and r["faces"]["best_box_iou_vs_full"] is not None]
            decoded = ", ".join("x".join(map(str, r["decoded_size"])) for r in mine)
            lines.append(
                f"| {name} | {s} | {decoded} | "
                f"{_fmt(max((a['mean_abs_diff'] for a in acc), default=None), 2)} | "
                f"{_fmt(max((a['max_abs_diff'] for a in acc), default=None), 0)} | "
                + ("identical" if acc and not psnr else _fmt(min(psnr, default=None), 1))
                + f" | {_fmt(min(hq, default=None), 1)} | {_fmt(min(ious, default=None), 3)} |")
    missing = [a for a in data["alternatives"] if a["status"] != "measured"]
    lines += ["", "Alternatives:", ""]
    lines += [f"- {a['name']}: {a['description']}" for a in data["alternatives"]
              if a["status"] == "measured"]
    lines += [f"- {a['name']}: not installed ({a['package']}: {a['reason']})" for a in missing]
    lines += ["", "Versions: " + "; ".join(f"{k} {v}" if k in ("python", "numpy", "onnxruntime")
                                           else f"{k}: {v}" for k, v in data["versions"].items())
              + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=OUT, help="folder for decoders.json/.md")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="CPU seconds per photo, size and alternative (split over rounds)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES),
                        help="network input sizes")
    parser.add_argument("--photos", nargs="+", default=list(phone_photos.SIZES),
                        help="JPEG file names in --testdata (phone photos are made if missing)")
    parser.add_argument("--testdata", type=Path, default=TESTDATA)
    parser.add_argument("--alternatives", nargs="+", choices=[a.name for a in ALTERNATIVES],
                        default=[a.name for a in ALTERNATIVES])
    parser.add_argument("--model", type=Path, default=MODEL,
                        help="CenterFace ONNX file for the face IoU (skipped if missing)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rounds < 1 or any(s <= 0 for s in args.sizes):
        parser.error("--seconds, --rounds and --sizes must be positive")

    started = time.monotonic()
    if any(not (args.testdata / p).is_file() for p in args.photos):
        phone_photos.make(args.testdata)
    photos = {p: (args.testdata / p).read_bytes() for p in args.photos}
    chosen = [a for a in ALTERNATIVES if a.name in args.alternatives or a.name == BASELINE]
    loaded = [load(a) for a in chosen]
    model = args.model if args.model.is_file() else None
    results = measure(photos, args.sizes, loaded, args.seconds, args.rounds, model)

    given = argv if argv is not None else sys.argv[1:]
    command = shlex.join(["python", "-m", "detect_loadtest.decoders", *given])
    if os.environ.get("PYTHONPATH"):
        command = f"PYTHONPATH={shlex.quote(os.environ['PYTHONPATH'])} {command}"
    data = {
        "command": command,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "duration_s": round(time.monotonic() - started, 1),
        "environment": results_file.environment(),
        "versions": versions(loaded),
        "face_model": str(model.relative_to(ROOT) if model and model.is_relative_to(ROOT)
                          else model) if model else "not found: faces skipped",
        "photos": [{"name": p, "bytes": len(d), "size": list(Image.open(io.BytesIO(d)).size)}
                   for p, d in photos.items()],
        "alternatives": [entry.summary() for entry in loaded],
        "results": results,
    }
    results_file.write(args.out, "decoders", data, render(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
