"""Capacity model: proxy cores, Envoy cores and GPU replicas for a target request rate.

Inputs are our own measurements, CPU time per request of each process from the benchmark
(loadtest/bench.py writes loadtest/results/bench/bench.json), plus the throughput of one
Triton GPU replica: CenterFace's images per second on one GPU at its max batch size,
measured by loadtest/gpu_network.py on a GPU host (`--gpu-bench`; onnxruntime's CUDA
provider or PyTorch on CUDA), or else an assumption (`--gpu-rps-per-replica`). The output
(deploy/CAPACITY.md) states the formula, every input, and where the GPU figure comes from.

    .venv/bin/python -m detect_deploy.capacity --bench loadtest/results/bench/bench.json \\
        --out deploy/CAPACITY.md [--target-rps 10000] [--target-utilisation 0.65] \\
        [--gpu-bench loadtest/results/gpu/gpu.json | --gpu-rps-per-replica 500] \\
        [--group gpu-a=0.5 --group gpu-b=0.5]

The model, for a target rate R and a target utilisation u (the headroom: the HPA's CPU
target, room for bursts, failures and rollouts):

    proxy cores   = R * cpu_ms_per_request(proxy) / 1000 / u
    Envoy cores   = R * cpu_ms_per_request(envoy) / 1000 / u
    proxy pods    = ceil(proxy cores / cores per proxy process)   (one process, one core)
    GPU replicas  = ceil(R / (gpu_rps_per_replica * u)) + spare replicas
    GPU-host CPU  = R * (preprocess + postprocess + backend framework ms per image) / 1000 / u

and, with Triton groups (--group NAME=SHARE, repeatable: the share of R each group serves),
each group sized on its own, with spare replicas of its own (a rollout or a failed node in
one GPU pool takes that pool's replicas only):

    GPU replicas of group g  = ceil(R * share_g / (gpu_rps_per_replica * u)) + spare replicas
    GPU-host CPU of group g  = share_g * GPU-host CPU

The last line is per image-size class (the benchmark image and 12, 4 and 1 MP phone JPEGs):
decoding, letterboxing and decoding the network's output run on the CPU of the GPU host,
in Triton's Python backend, and on real photos they cost more than the proxy and Envoy
together.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BENCH = ROOT / "loadtest" / "results" / "bench" / "bench.json"
DEFAULT_OUT = ROOT / "deploy" / "CAPACITY.md"

# Scenarios of loadtest/bench.py the model needs, and what each contributes.
PROXY = "proxy"                    # proxy CPU per call (null_detector, no aggregation)
AGGREGATION = "proxy+aggregation"  # the same with request aggregation
EDGE = "envoy+proxy"               # through Envoy with TLS: proxy CPU and Envoy CPU per call
REQUIRED = (PROXY, AGGREGATION, EDGE)
# face_detector through the whole stack, one scenario per image (bench.py's figure (d)), each
# with the CPU per image of the pipeline's steps in-process under "pipeline_limit".
FACE = "stack face_detector"
DEFAULT_IMAGE_CLASS = "phone-12mp.jpg"

# The HPA's CPU target in deploy/k8s/autoscaling.yaml: the fleet this model sizes is the
# one the autoscaler converges to at the target rate.
DEFAULT_UTILISATION = 0.65
# ASSUMPTION, used only without --gpu-bench: face_detector requests per second one Triton
# replica on one mid-range data-centre GPU sustains. loadtest/results/gpu/gpu.json has
# CenterFace measured on a GPU; measure yours (loadtest/gpu_network.py on the target GPU,
# perf_analyzer against the ensemble) and pass --gpu-bench or --gpu-rps-per-replica.
DEFAULT_GPU_RPS = 500.0
# The providers of loadtest/gpu_network.py that ran on a GPU, and how the report names them.
GPU_RUNTIMES = {
    "CUDAExecutionProvider": "onnxruntime's CUDA execution provider",
    "torch-cuda": "PyTorch on CUDA, the ONNX file converted with onnx2torch",
}


class InputError(SystemExit):
    """A bench file the model cannot use: the message says what is missing and where."""


@dataclass(frozen=True)
class GpuMeasurement:
    """face_detector's network on one GPU at its max batch size (loadtest/gpu_network.py)."""
    images_per_s: float
    device: str          # the GPU's name
    runtime: str         # what ran the network, as the report names it
    precision: str       # of images_per_s: the model's own, fp32
    max_batch_size: int
    tf32: bool = False   # fp32 convolutions in TF32 (cuDNN), where the file says so
    # Where the file has them (the torch runtime): the network alone, tensors left on the
    # GPU; fp16, for reference only; the largest differences from onnxruntime's CPU output.
    resident_images_per_s: float | None = None
    fp16_images_per_s: float | None = None
    fp32_max_abs_diff: float | None = None
    fp16_max_abs_diff: float | None = None


def gpu_measurement(path: Path, network: str = "centerface") -> GpuMeasurement:
    """The figure the GPU replicas are sized with, from loadtest/gpu_network.py's output;
    a file measured on a CPU is refused."""
    try:
        data = json.loads(path.read_text())
        row = next(n for n in data["networks"] if n["model"] == network)
        rps, device = float(row["serving_images_per_s"]), str(data["device"])
        provider, max_batch = row.get("provider"), int(row["max_batch_size"])
        precision = str(row.get("precision", "fp32"))
        serving = row["batches"].get(str(max_batch), {})
        resident, fp16 = (_optional(serving.get("resident_images_per_s")),
                          _optional(row.get("serving_fp16_images_per_s")))
        agreement = row.get("agreement") or {}
        fp32_diff, fp16_diff = (_largest(agreement.get("max_abs_diff_fp32")),
                                _largest(agreement.get("max_abs_diff_fp16")))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError,
            StopIteration) as exc:
        raise InputError(f"{path}: not a loadtest/gpu_network.py result with {network!r}: "
                         f"{exc!r}") from None
    if provider not in GPU_RUNTIMES:
        raise InputError(f"{path}: {network} ran on {provider}, not on a GPU (expected one of "
                         f"{', '.join(GPU_RUNTIMES)})")
    runtime = GPU_RUNTIMES[provider]
    versions = ", ".join(f"{k} {data[k]}" for k in ("torch", "onnx2torch") if k in data)
    if provider == "CUDAExecutionProvider" and "onnxruntime" in data:
        versions = f"onnxruntime {data['onnxruntime']}"
    return GpuMeasurement(rps, device, f"{runtime} ({versions})" if versions else runtime,
                          precision, max_batch, bool(row.get("tf32")), resident, fp16,
                          fp32_diff, fp16_diff)


def _optional(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _largest(diffs: dict[str, float] | None) -> float | None:
    return max(float(v) for v in diffs.values()) if diffs else None


@dataclass(frozen=True)
class Row:
    scenario: str
    model: str
    rps: float
    cpu_ms: dict[str, float]
    latency_ms: dict[str, float]


@dataclass(frozen=True)
class ImageClass:
    """CPU per face_detector image of one image size, by where it runs."""
    image: str
    bytes: int
    proxy_ms: float
    envoy_ms: float
    preprocess_ms: float
    network_ms: float
    postprocess_ms: float
    framework_ms: float  # the backend's CPU beyond the three steps (never below 0)

    @property
    def gpu_host_cpu_ms(self) -> float:
        """What stays on the GPU host's CPU when the network runs on its GPU."""
        return self.preprocess_ms + self.postprocess_ms + self.framework_ms


def image_classes(data: dict) -> list[ImageClass]:
    """One class per face_detector stack scenario that has its in-process step figures."""
    limits = data.get("pipeline_limit") or {}
    classes = []
    for entry in data.get("results", []):
        limit = limits.get(entry.get("scenario"))
        if not str(entry.get("scenario", "")).startswith(FACE) or limit is None:
            continue
        cpu, steps = entry["cpu_ms_per_request"], limit["cpu_ms_per_image"]
        backend = sum(v for k, v in cpu.items() if k not in ("front", "envoy"))
        framework = backend - steps["preprocess"] - steps["network"] - steps["postprocess"]
        classes.append(ImageClass(limit["image"], int(limit["bytes"]), float(cpu["front"]),
                                  float(cpu.get("envoy", 0.0)), float(steps["preprocess"]),
                                  float(steps["network"]), float(steps["postprocess"]),
                                  max(0.0, framework)))
    return classes


def load(path: Path) -> tuple[str, dict[str, Row]]:
    """The bench file's command and one row per scenario the model needs. Several rows of
    one scenario (repeats, models): the one with the most proxy CPU per request, so that
    the estimate errs on the side of more capacity."""
    if not path.exists():
        raise InputError(f"{path}: no such file; run the benchmark first (make bench)")
    try:
        data = json.loads(path.read_text())
        results = data["results"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputError(
            f"{path}: not a bench result ({{'command', 'results': [...]}}): {exc}") from None
    rows: dict[str, Row] = {}
    for entry in results:
        try:
            row = Row(entry["scenario"], entry.get("model", ""), float(entry["rps"]),
                      {k: float(v) for k, v in entry["cpu_ms_per_request"].items()},
                      {k: float(v) for k, v in entry.get("latency_ms", {}).items()})
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{path}: malformed result {entry!r}: {exc}") from None
        if row.scenario not in REQUIRED:
            continue
        best = rows.get(row.scenario)
        if best is None or row.cpu_ms.get("front", 0) > best.cpu_ms.get("front", 0):
            rows[row.scenario] = row
    missing = [s for s in REQUIRED if s not in rows]
    if missing:
        present = sorted({str(e.get("scenario")) for e in results if isinstance(e, dict)})
        raise InputError(f"{path}: scenario(s) {', '.join(repr(m) for m in missing)} missing "
                         f"(present: {', '.join(present) or 'none'}); the capacity model needs "
                         f"{', '.join(repr(s) for s in REQUIRED)}")
    needed = ((PROXY, ["front"]), (AGGREGATION, ["front"]), (EDGE, ["front", "envoy"]))
    for scenario, keys in needed:
        for key in keys:
            value = rows[scenario].cpu_ms.get(key)
            if value is None:
                raise InputError(f"{path}: scenario {scenario!r} has no "
                                 f"cpu_ms_per_request.{key}")
            if not value > 0:
                raise InputError(f"{path}: scenario {scenario!r} has "
                                 f"cpu_ms_per_request.{key} = {value}; expected > 0")
    return str(data.get("command", "")), rows


def load_image_classes(path: Path) -> list[ImageClass]:
    try:
        return image_classes(json.loads(path.read_text()))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: malformed face_detector scenario or pipeline_limit: "
                         f"{exc}") from None


@dataclass(frozen=True)
class GroupShare:
    """A Triton group (the proxy's --triton-groups name) and the share of the target rate
    it serves."""
    name: str
    share: float


_GROUP_NAME = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,38}[a-z0-9])?$")  # as --triton-groups


def parse_group(text: str) -> GroupShare:
    """``gpu-a=0.6`` -> GroupShare("gpu-a", 0.6); ValueError saying what is wrong."""
    name, sep, share = text.partition("=")
    name = name.strip()
    if not sep or not _GROUP_NAME.match(name):
        raise ValueError(f"{text!r}: expected NAME=SHARE, NAME as in the proxy's "
                         "--triton-groups (lower-case letters, digits, '-' and '_')")
    try:
        value = float(share)
    except ValueError:
        raise ValueError(f"{text!r}: SHARE must be a number in (0, 1]") from None
    if not 0 < value <= 1:
        raise ValueError(f"{text!r}: SHARE must be in (0, 1], the part of the target rate "
                         "the group serves")
    return GroupShare(name, value)


def check_groups(groups: list[GroupShare]) -> None:
    """Every call is served by some group: the shares add up to 1 or more (more: groups
    sized to take over from one another)."""
    names = [g.name for g in groups]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"group {', '.join(twice)} is given twice")
    total = sum(g.share for g in groups)
    if groups and total < 1 - 1e-9:
        raise ValueError(f"the groups' shares add up to {total:g}: every call goes to some "
                         "group, so they must add up to at least 1")


@dataclass(frozen=True)
class Plan:
    target_rps: float
    utilisation: float
    gpu_rps: float
    spare_gpu: int
    proxy_ms: float
    aggregation_ms: float
    envoy_ms: float
    classes: tuple[ImageClass, ...] = ()
    image_class: str = DEFAULT_IMAGE_CLASS
    gpu: GpuMeasurement | None = None  # where gpu_rps was measured; None: an assumption
    groups: tuple[GroupShare, ...] = ()  # Triton groups; none: one pool

    def cores(self, ms_per_request: float) -> float:
        return self.target_rps * ms_per_request / 1000 / self.utilisation

    @property
    def proxy_cores(self) -> float:
        return self.cores(self.proxy_ms)

    @property
    def aggregation_cores(self) -> float:
        return self.cores(self.aggregation_ms)

    @property
    def envoy_cores(self) -> float:
        return self.cores(self.envoy_ms)

    @property
    def proxy_pods(self) -> int:
        return math.ceil(self.proxy_cores)  # one proxy process (one core) per pod

    @property
    def rps_per_pod(self) -> float:
        return self.utilisation * 1000 / self.proxy_ms

    @property
    def envoy_millicores_per_pod(self) -> int:
        return math.ceil(self.envoy_cores / self.proxy_pods * 1000)

    @property
    def gpu_replicas(self) -> int:
        return math.ceil(self.target_rps / (self.gpu_rps * self.utilisation)) + self.spare_gpu

    def group_replicas(self, group: GroupShare) -> int:
        """ceil(R * share / (gpu_rps * u)) + spare: each group has spares of its own."""
        return math.ceil(self.target_rps * group.share / (self.gpu_rps * self.utilisation)) \
            + self.spare_gpu

    @property
    def grouped_gpu_replicas(self) -> int:
        """GPU replicas of every group together (more than one pool's: rounding up per group,
        and a spare in each)."""
        return sum(self.group_replicas(g) for g in self.groups)

    @property
    def sized_class(self) -> ImageClass | None:
        """The image class the headline sizes the GPU hosts' CPU for."""
        return next((c for c in self.classes if c.image == self.image_class), None)


def plan(rows: dict[str, Row], target_rps: float, utilisation: float, gpu_rps: float,
         spare_gpu: int, classes: list[ImageClass] | None = None,
         image_class: str = DEFAULT_IMAGE_CLASS, gpu: GpuMeasurement | None = None,
         groups: list[GroupShare] | None = None) -> Plan:
    """Proxy CPU per call is taken from whichever proxy scenario measured more (directly,
    or behind Envoy with TLS), so the estimate does not depend on which path was cheaper."""
    check_groups(list(groups or ()))
    return Plan(target_rps, utilisation, gpu_rps, spare_gpu,
                proxy_ms=max(rows[PROXY].cpu_ms["front"], rows[EDGE].cpu_ms["front"]),
                aggregation_ms=rows[AGGREGATION].cpu_ms["front"],
                envoy_ms=rows[EDGE].cpu_ms["envoy"], classes=tuple(classes or ()),
                image_class=image_class, gpu=gpu, groups=tuple(groups or ()))


def _f(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if value < 100 else f"{value:,.0f}"


def _gpu_host_row(p: Plan) -> str:
    c = p.sized_class
    if c is None:
        return (f"| GPU-host CPU (pre/postprocessing) | no `{FACE}` scenario for "
                f"`{p.image_class}` in the bench file | not sized: run the full `make bench` |")
    return (f"| GPU-host CPU for pre/postprocessing, {c.image} | {_f(p.target_rps)} × "
            f"{_f(c.gpu_host_cpu_ms)} ms / 1000 / {p.utilisation:g} | "
            f"**{p.cores(c.gpu_host_cpu_ms):.0f} cores** on the GPU hosts, "
            f"≈ {p.cores(c.gpu_host_cpu_ms) / p.gpu_replicas:.1f} per GPU replica |")


def _gpu_input(p: Plan) -> str:
    g = p.gpu
    if g is not None:
        precision = g.precision + (" with TF32 convolutions (what onnxruntime's CUDA provider "
                                   "does by default)" if g.tf32 else "")
        notes = []
        if g.fp32_max_abs_diff is not None:
            notes.append(f"On one random input its outputs were within "
                         f"{g.fp32_max_abs_diff:.2g} of onnxruntime's on the CPU.")
        if g.resident_images_per_s is not None:
            notes.append(f"With the tensors left on the GPU the network alone ran "
                         f"{_f(g.resident_images_per_s)} images per second: the copies take "
                         f"about {1 - g.images_per_s / g.resident_images_per_s:.0%} of a "
                         f"batch's time.")
        if g.fp16_images_per_s is not None:
            within = (f" (outputs within {g.fp16_max_abs_diff:.2g} of onnxruntime's fp32 ones)"
                      if g.fp16_max_abs_diff is not None else "")
            notes.append(f"For reference only, fp16{within} served "
                         f"{_f(g.fp16_images_per_s)} images per second at the same batch size; "
                         f"Triton's onnxruntime backend serves the fp32 model as it is, so the "
                         f"fp32 figure sizes the fleet.")
        if not g.runtime.startswith("onnxruntime"):
            notes.append("Triton runs the network with onnxruntime's CUDA provider, not this "
                         "runtime; both run cuDNN's convolutions, but confirm the figure with "
                         "`loadtest/gpu_network.py --runtime onnxruntime` on a host with "
                         "onnxruntime's CUDA build before relying on a small margin.")
        text = " ".join([
            f"**Measured on a GPU**: {g.device}, {g.runtime}, {precision} "
            f"(`loadtest/gpu_network.py`, `--gpu-bench`). CenterFace at its max batch size "
            f"({g.max_batch_size}) serves **{_f(g.images_per_s)} images per second** on one "
            f"GPU: the network alone, from host memory to host memory (the input's copy to the "
            f"GPU and the outputs' copy back included); the decode and NMS around it are the "
            f"GPU-host CPU row.", *notes,
            f"Spare replicas: {p.spare_gpu} (`--spare-gpu-replicas`), for a rolling update or "
            f"a failed node."])
        return textwrap.fill(text, width=92, break_long_words=False, break_on_hyphens=False)
    return f"""**Assumption, not measured here** (this project's machines have no GPU): one Triton replica
on one GPU serves **{_f(p.gpu_rps)} face_detector requests per second**
(`--gpu-rps-per-replica`). It depends on the GPU, the image sizes, and whether decoding
runs in the Python backend (CPU) or DALI (GPU). Measure it on the target hardware
(`loadtest/gpu_network.py`, then `--gpu-bench`) and regenerate; the GPU row scales
inversely with it. Spare replicas: {p.spare_gpu} (`--spare-gpu-replicas`), for a rolling
update or a failed node."""


def _grouped_note(p: Plan) -> str:
    if not p.groups:
        return ""
    return (f" as one pool; **{p.grouped_gpu_replicas}** in {len(p.groups)} Triton groups "
            f"(per group below)")


def _groups_section(p: Plan) -> str:
    if not p.groups:
        return ""
    c = p.sized_class
    host = f" | GPU-host CPU, {c.image}" if c else ""
    rows = "\n".join(
        f"| `{g.name}` | {g.share:g} | {_f(p.target_rps * g.share)} | "
        f"⌈{_f(p.target_rps)} × {g.share:g} / ({_f(p.gpu_rps)} × {p.utilisation:g})⌉ + "
        f"{p.spare_gpu} spare | **{p.group_replicas(g)} replicas**"
        + (f" | {p.cores(c.gpu_host_cpu_ms) * g.share:.0f} cores" if c else "") + " |"
        for g in p.groups)
    total = sum(g.share for g in p.groups)
    over = "" if total <= 1 + 1e-9 else (
        f" The shares add up to {total:g}: groups are sized to take over part of one "
        f"another's calls.")
    return f"""## Per Triton group

Each Triton group (a GPU pool; `--triton-groups` of the proxies, one Deployment each in
`deploy/k8s/triton.yaml`) is sized for its share of the target rate (`--group NAME=SHARE`),
with spare replicas of its own, since a rolling update or a failed node in one pool takes
that pool's replicas only:

- GPU replicas of group g = ⌈R × share_g / (gpu_rps_per_replica × u)⌉ + spare replicas
- GPU-host CPU of group g = share_g × the GPU-host CPU above

| group | share | RPS | formula | GPU replicas{host} |
|---|---|---|---|---{"|---" if c else ""}|
{rows}

**{p.grouped_gpu_replicas} GPU replicas** in all groups, against {p.gpu_replicas} as one
pool: each group rounds up and keeps its own spares.{over} A share is the part of the calls
a group serves: where several groups serve a model, each proxy sends a call to the one with
the fewest of its calls in flight, so calls split in proportion to what each group
completes (its replicas); give each group replicas in proportion to its share. Every
group's GPUs are taken to be the one measured; a pool of another GPU needs its own figure.

"""


def _classes_section(p: Plan) -> str:
    if not p.classes:
        return ""
    rows = "\n".join(
        f"| {c.image} | {c.bytes / 1e6:.2f} | {_f(c.proxy_ms)} | {_f(c.envoy_ms)} | "
        f"{_f(c.preprocess_ms)} | {_f(c.postprocess_ms)} | {_f(c.framework_ms)} | "
        f"{_f(c.network_ms)} | {p.cores(c.proxy_ms):.0f} | {p.cores(c.envoy_ms):.0f} | "
        f"**{p.cores(c.gpu_host_cpu_ms):.0f}** |" for c in p.classes)
    return f"""## Every CPU, per image-size class

face_detector through the whole stack (`{FACE}` scenarios of the benchmark, figure (d)), one
row per image: CPU ms per image where it runs, and cores at {_f(p.target_rps)} RPS and
{p.utilisation:.0%} utilisation. Proxy and Envoy are measured in the stack; preprocess
(decode, orient, letterbox) and postprocess (heatmap decode, NMS) in-process with the
repository's code (`loadtest/pipeline_limit.py`); "framework" is what the backends spent
beyond the three steps (never below 0). On a GPU host the network runs on the GPU (the CPU
figure is shown for reference only); everything else in the GPU-host column stays on its
CPU. `--image-class` picks the row the result above sizes.

| image | MB | proxy ms | Envoy ms | preprocess ms | postprocess ms | framework ms | network ms (CPU, for reference) | proxy cores | Envoy cores | GPU-host CPU cores |
|---|---|---|---|---|---|---|---|---|---|---|
{rows}

"""


def report(p: Plan, rows: dict[str, Row], source: str, bench_command: str,
           command: str) -> str:
    def lat(r: Row) -> str:
        return " / ".join(_f(r.latency_ms[k]) for k in ("p50", "p95", "p99")
                          if k in r.latency_ms) or "n/a"

    inputs = "\n".join(
        f"| `{r.scenario}` | {r.model or 'n/a'} | {_f(r.rps)} | "
        f"{_f(r.cpu_ms['front'])} | {_f(r.cpu_ms['envoy']) if 'envoy' in r.cpu_ms else '–'} | "
        f"{lat(r)} |" for r in (rows[s] for s in REQUIRED))
    return f"""# Capacity model

Generated by `deploy/capacity.py`; do not edit by hand. Regenerate after a benchmark run:

```sh
{command}
```

## Target

**{_f(p.target_rps)} requests per second**, sized so that every part runs at
**{p.utilisation:.0%}** of its capacity at that rate (`--target-utilisation`; the HPA's
CPU target in `deploy/k8s/autoscaling.yaml`). The rest is headroom for bursts, a failed
zone or node, and rolling updates.

## Result

| part | formula | result |
|---|---|---|
| proxy CPU | {_f(p.target_rps)} × {_f(p.proxy_ms)} ms / 1000 / {p.utilisation:g} | **{p.proxy_cores:.1f} cores** |
| proxy pods (one process = one core each) | ⌈{p.proxy_cores:.2f}⌉ | **{p.proxy_pods} pods**, ≈ {_f(p.rps_per_pod)} RPS each |
| Envoy CPU | {_f(p.target_rps)} × {_f(p.envoy_ms)} ms / 1000 / {p.utilisation:g} | **{p.envoy_cores:.1f} cores**, ≈ {p.envoy_millicores_per_pod} m per pod (sidecar request) |
| GPU replicas | ⌈{_f(p.target_rps)} / ({_f(p.gpu_rps)} × {p.utilisation:g})⌉ + {p.spare_gpu} spare | **{p.gpu_replicas} replicas** (one GPU each){_grouped_note(p)} |
| proxy CPU with request aggregation | {_f(p.target_rps)} × {_f(p.aggregation_ms)} ms / 1000 / {p.utilisation:g} | {p.aggregation_cores:.1f} cores (if `--batch-max-wait-us` is on) |
{_gpu_host_row(p)}

Proxy CPU per request is the larger of the `proxy` and `envoy+proxy` measurements
({_f(rows[PROXY].cpu_ms['front'])} and {_f(rows[EDGE].cpu_ms['front'])} ms). Envoy's is
the `envoy+proxy` measurement: everything that Envoy process did per call in that scenario
(TLS termination and the front listener, and the hop to the backend where the scenario
routes the proxy's backend calls through Envoy's egress, as the sidecar does).

{_groups_section(p)}{_classes_section(p)}
## Inputs

Measured (`{source}`, written by `{bench_command or 'loadtest/bench.py'}`): CPU time per
request of each process, from `/proc/<pid>/stat` before and after each scenario.

| scenario | model | RPS (bench machine) | proxy CPU ms/request | Envoy CPU ms/request | latency ms p50 / p95 / p99 |
|---|---|---|---|---|---|
{inputs}

{_gpu_input(p)}

## Caveats

- CPU per request was measured on the benchmark machine's cores; on faster or slower cores
  the proxy and Envoy rows scale with per-core speed. The RPS column is that machine's,
  for context only; the model uses CPU time per request, not throughput.
- The benchmark's requests use `null_detector` with small images; larger images cost the
  proxy a little more (bytes copied) and Envoy more (TLS, buffering).
- If the benchmark's `envoy+proxy` scenario sends the proxy's backend calls directly
  rather than through Envoy's egress, the sidecar's Envoy costs somewhat more than shown:
  one more plaintext HTTP/2 hop per call.
- Per-request CPU assumes calls spread evenly over pods; kube-proxy balances connections,
  so the sidecar Envoy recycles them (120 s) to keep the spread even.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, default=DEFAULT_BENCH,
                        help="bench.json from loadtest/bench.py")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--target-rps", type=float, default=10_000.0)
    parser.add_argument("--target-utilisation", type=float, default=DEFAULT_UTILISATION,
                        help="fraction of capacity used at the target rate (headroom = 1 - "
                             "this); default: the HPA's CPU target")
    parser.add_argument("--gpu-rps-per-replica", type=float, default=DEFAULT_GPU_RPS,
                        help="ASSUMPTION: requests/s one Triton GPU replica serves "
                             f"(default {DEFAULT_GPU_RPS:g}; measure it on your GPUs)")
    parser.add_argument("--spare-gpu-replicas", type=int, default=1)
    parser.add_argument("--gpu-bench", type=Path,
                        help="loadtest/gpu_network.py output measured on a GPU (onnxruntime's "
                             "CUDA provider or PyTorch on CUDA), e.g. "
                             "loadtest/results/gpu/gpu.json: replaces --gpu-rps-per-replica "
                             "with the measured figure")
    parser.add_argument("--image-class", default=DEFAULT_IMAGE_CLASS,
                        help="image of the face_detector scenarios that sizes the GPU hosts' "
                             "CPU (default: the 12 MP phone JPEG)")
    parser.add_argument("--group", action="append", default=[], metavar="NAME=SHARE",
                        help="a Triton group and the share of the target rate it serves, in "
                             "(0, 1] (repeatable; shares add up to at least 1): GPU replicas "
                             "per group = ceil(R * share / (gpu_rps * u)) + spare")
    args = parser.parse_args(argv)
    try:
        groups = [parse_group(g) for g in args.group]
        check_groups(groups)
    except ValueError as exc:
        parser.error(f"--group: {exc}")
    if not 0 < args.target_utilisation <= 1:
        parser.error("--target-utilisation must be in (0, 1]")
    if args.target_rps <= 0 or args.gpu_rps_per_replica <= 0 or args.spare_gpu_replicas < 0:
        parser.error("--target-rps and --gpu-rps-per-replica must be positive, "
                     "--spare-gpu-replicas not negative")
    bench_command, rows = load(args.bench)
    gpu_rps, gpu = args.gpu_rps_per_replica, None
    if args.gpu_bench is not None:
        gpu = gpu_measurement(args.gpu_bench)
        gpu_rps = gpu.images_per_s
    p = plan(rows, args.target_rps, args.target_utilisation, gpu_rps,
             args.spare_gpu_replicas, load_image_classes(args.bench), args.image_class,
             gpu, groups)

    def shown(path: Path) -> str:
        resolved = path.resolve()
        return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)

    command = shlex.join([".venv/bin/python", "-m", "detect_deploy.capacity",
                          "--bench", shown(args.bench), "--out", shown(args.out), "--target-rps", f"{args.target_rps:g}",
                          "--target-utilisation", f"{args.target_utilisation:g}",
                          *(["--gpu-bench", shown(args.gpu_bench)] if args.gpu_bench else
                            ["--gpu-rps-per-replica", f"{args.gpu_rps_per_replica:g}"]),
                          "--spare-gpu-replicas", str(args.spare_gpu_replicas),
                          "--image-class", args.image_class,
                          *(a for g in groups for a in ("--group", f"{g.name}={g.share:g}"))])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(p, rows, shown(args.bench), bench_command, command))
    host = (f", {p.cores(p.sized_class.gpu_host_cpu_ms):.0f} GPU-host CPU cores"
            if p.sized_class else "")
    per_group = "".join(f", {g.name}: {p.group_replicas(g)}" for g in p.groups)
    print(f"wrote {shown(args.out)}: {p.proxy_cores:.1f} proxy cores ({p.proxy_pods} pods), "
          f"{p.envoy_cores:.1f} Envoy cores, {p.gpu_replicas} GPU replicas{per_group}{host} "
          f"for {args.target_rps:g} RPS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
