"""Benchmarks, side by side in one run: the proxy against its baselines, on loopback only.

Every scenario drives Detect calls (or DetectStream calls of several frames) with h2load
(closed loop: fixed concurrency; open loop: fixed arrival rate) through one front end, while
a Python client samples answers for correctness (loadtest/sampler.py). h2load does not read
grpc-status, so outcomes are cross-checked with the proxy's own counters (OK calls, cache
lookups, stream images) and the rows the backend inferred. CPU per request comes from /proc
for every process, the batch-size histogram from the backend's ModelStatistics. Results:
bench.json and bench.md in --out; a full run also regenerates loadtest/RESULTS.md
(loadtest/report.py). Each run is bounded in requests and time.

    make bench          # full run, a few minutes
    make bench-smoke    # about a minute, part of `make test` so the harness keeps working
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc
import numpy as np
import tritonclient.grpc as grpcclient

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_loadtest import h2load, pipeline_limit, report
from detect_loadtest.h2load import Load, grpc_frame
from detect_loadtest.procstat import cpu_seconds
from detect_loadtest.sampler import Sampler, answer_rows, expected_detections
from detect_proxy import contract
from detect_proxy.models import from_config
from detect_stack.phone_photos import SIZES as PHONE_PHOTOS
from detect_stack.promtext import Sample, scrape, value
from detect_stack.servers import (
    BACKENDS,
    free_port,
    localtriton,
    proxy,
    running,
    triton_client,
    triton_server,
)
from detect_stack.stack import envoy, make_certs, stack

ROOT = Path(__file__).resolve().parent.parent

DETECT_PATH = contract.DETECT_PATH
INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
# Envoy's rate limits are a feature under test elsewhere; here they must not shape the load.
UNLIMITED: dict[str, Any] = {"global_rps": 1_000_000, "global_burst": 1_000_000,
                             "client_rps": 1_000_000, "client_burst": 1_000_000}
PROXY_FLAGS = ("--log-level", "warning")
NO_AGGREGATION = ("--batch-max-wait-us", "0")
# The launcher turns the result cache off unless a --cache- flag is given: name both states.
CACHE_OFF = ("--cache-ttl-s", "0")
CACHE_ON = ("--cache-ttl-s", "3600")
STREAM_FRAMES = 16  # images per DetectStream call of (h)
STREAM_WINDOW = 8  # the proxy's default --stream-window: images of one stream in flight
# Backend rows a scenario answered from the cache may still cause (an entry that expired or
# was evicted mid-run): more than this and hits are reaching the backend.
HANDFUL = 4


@dataclass
class Front:
    """What a scenario sends to: URL, the processes to charge CPU to, how to check results."""
    url: str
    pids: dict[str, list[int]]  # role -> pids (front, envoy, localtriton)
    channel: Callable[[], grpc.Channel] | None = None  # for the sampling client
    proxy_metrics: list[int] = field(default_factory=list)  # proxies' Prometheus ports
    path: str = DETECT_PATH
    backend_tls: Path | None = None  # certificates of a backend that serves TLS only


CacheCase = Literal["off", "miss", "hit"]


@dataclass(frozen=True)
class Shape:
    """What each h2load request carries when it is not one plain Detect of the image, and
    which of the proxy's counters must agree with it.

    ``stream_frames``: a DetectStream of that many frames (distinct ids, the same image),
    declared in ``x-detect-images``; h2load sends the whole body and half-closes. ``cache``:
    the proxy's result cache in this scenario, checked with its lookup counter: "off" (no
    lookups), "miss" (every request sets skip_cache: h2load repeats one body, so a bypass is
    how a miss's whole cost, hashing and storing included, is produced; the sampling
    client's calls are hits), "hit" (the backend sees at most a handful of rows)."""
    stream_frames: int = 0
    cache: CacheCase | None = None

    @property
    def images(self) -> int:
        """Images per request."""
        return self.stream_frames or 1

    @property
    def cached(self) -> bool:
        """Whether the sampling client's calls are answered from the cache (the warm-up
        stored the image's answer) rather than by the backend."""
        return self.cache in ("miss", "hit")


UNARY = Shape()


def _plain(target: str) -> Callable[[], grpc.Channel]:
    return lambda: grpc.insecure_channel(target)


@contextlib.contextmanager
def proxy_front(tmp: Path, triton: str, flags: tuple[str, ...]) -> Iterator[Front]:
    metrics = free_port()
    with proxy(tmp, triton, *PROXY_FLAGS, *flags, metrics_port=metrics) as (target, proc):
        yield Front(f"http://{target}", {"front": [proc.popen.pid]}, _plain(target), [metrics])


@contextlib.contextmanager
def baseline_front(tmp: Path, triton: str, script: str, sampled: bool = True,
                   tls: Path | None = None) -> Iterator[Front]:
    """A baseline program of loadtest/ (the pass-through floor, the client per request).
    The floor returns Triton's answer untranslated, so it cannot be sampled (sampled=False).
    ``tls``: the backend serves TLS with these certificates (client per request only)."""
    target = f"127.0.0.1:{free_port()}"

    def ready() -> bool:
        with grpc.insecure_channel(target) as channel:
            grpc.channel_ready_future(channel).result(timeout=1)
            return True

    args = [sys.executable, "-m", f"detect_loadtest.{script}", "--listen", target,
            "--triton-url", triton, *(["--triton-ca", str(tls / "ca.crt")] if tls else [])]
    with running(args, tmp / f"{script}.log", ready) as proc:
        yield Front(f"http://{target}", {"front": [proc.popen.pid]},
                    _plain(target) if sampled else None, backend_tls=tls)


@contextlib.contextmanager
def direct_front(triton: str) -> Iterator[Front]:
    """No front end: ModelInfer straight to the backend (the reference for added latency)."""
    yield Front(f"http://{triton}", {}, None, path=INFER_PATH)


@contextlib.contextmanager
def envoy_front(tmp: Path, triton: str, processes: int) -> Iterator[Front]:
    """Envoy (TLS front, Triton egress) and one proxy command running ``processes`` processes."""
    certs = make_certs(tmp / "certs")
    egress, base, metrics = free_port(), free_port(), free_port()
    with proxy(tmp, f"127.0.0.1:{egress}", *PROXY_FLAGS, "--processes", str(processes),
               port=base, metrics_port=metrics, wait_serving=False) as (_, proc), \
            envoy(tmp, certs, [f"127.0.0.1:{base + i}" for i in range(processes)], [triton],
                  egress_port=egress, **UNLIMITED) as edge:
        yield Front(f"https://{edge.front}", {"front": [proc.popen.pid],
                                               "envoy": [edge.process.popen.pid]},
                    edge.channel, [metrics + i for i in range(processes)])


@contextlib.contextmanager
def tls_egress_front(tmp: Path, triton: str, certs: Path) -> Iterator[Front]:
    """The proxy sending through Envoy's egress, which keeps TLS connections to a backend
    that serves TLS only: the pool across a TLS hop, as between hosts."""
    metrics = free_port()
    with envoy(tmp, certs, [], [triton], triton_tls_ca=str(certs / "ca.crt"),
               triton_tls_server_name="localhost", **UNLIMITED) as edge, \
            proxy(tmp, f"127.0.0.1:{edge.egress_port}", *PROXY_FLAGS, *NO_AGGREGATION,
                  metrics_port=metrics) as (target, proc):
        yield Front(f"http://{target}", {"front": [proc.popen.pid],
                                         "envoy": [edge.process.popen.pid]},
                    _plain(target), [metrics], backend_tls=certs)


@contextlib.contextmanager
def stack_front(tmp: Path) -> Iterator[tuple[Front, list[str]]]:
    """The whole stack of `make run`: Envoy, two proxies, two backend replicas."""
    with stack(tmp, replicas=2, proxies=2, proxy_flags=PROXY_FLAGS, **UNLIMITED) as s:
        ports = [int(m.rsplit(":", 1)[1]) for m in s.proxy_metrics]
        yield Front(f"https://{s.envoy.front}",
                    {"front": [p.popen.pid for _, p in s.proxies],
                     "envoy": [s.envoy.process.popen.pid],
                     "localtriton": [p.popen.pid for _, p in s.tritons]},
                    s.envoy.channel, ports), [url for url, _ in s.tritons]


def _stats(urls: list[str], model: str,
           tls: Path | None = None) -> tuple[int, dict[str, int]]:
    """Rows the backends inferred for ``model`` and their batch-size histogram, summed."""
    rows = 0
    sizes: dict[str, int] = {}
    for url in urls:
        with triton_client(url, tls) as client:
            stats = client.get_inference_statistics(model).model_stats[0]
        rows += stats.inference_count
        for b in stats.batch_stats:
            sizes[str(b.batch_size)] = sizes.get(str(b.batch_size), 0) + b.compute_infer.count
    return rows, sizes


def _scrape_all(ports: list[int]) -> list[Sample]:
    return [s for port in ports for s in scrape(port)]


def _ok_calls(samples: list[Sample]) -> tuple[int, int]:
    name = "rpc_server_duration_milliseconds_count"
    return int(value(samples, name, status="OK")), int(value(samples, name))


CACHE_RESULTS = ("hit", "miss", "coalesced", "bypassed")


def _counters(samples: list[Sample]) -> dict[str, int]:
    """The proxy's counters the cache and stream scenarios are checked with."""
    counts = {f"cache {result}": int(value(samples, "detect_cache_lookups_total", result=result))
              for result in CACHE_RESULTS}
    counts["stream images ok"] = int(value(samples, "detect_images_total",
                                           method=contract.DETECT_STREAM, code="OK"))
    return counts


def _expected_counters(shape: Shape, requests: int, sampled: int) -> dict[str, list[int]]:
    """[low, high] of each counter's rise: what the scenario's calls must have done."""
    images = requests * shape.images
    zero = [0, 0]
    expected: dict[str, list[int]] = {}
    if shape.cache == "off":
        expected = {f"cache {result}": zero for result in CACHE_RESULTS}
    elif shape.cache == "miss":
        expected = {"cache bypassed": [images, images], "cache hit": [sampled, sampled],
                    "cache miss": zero, "cache coalesced": zero}
    elif shape.cache == "hit":
        hits = images + sampled
        expected = {"cache hit": [hits - HANDFUL, hits], "cache miss": [0, HANDFUL],
                    "cache coalesced": [0, HANDFUL], "cache bypassed": zero}
    if shape.stream_frames:
        expected["stream images ok"] = [images, images]
    return expected


def _increase(before: list[Sample], after: list[Sample], metric: str, **labels: str) -> float:
    return value(after, metric, **labels) - value(before, metric, **labels)


def request_body(front: Front, tritons: list[str], model: str, image: bytes,
                 shape: Shape = UNARY) -> bytes:
    if front.path == INFER_PATH:
        with grpcclient.InferenceServerClient(tritons[0]) as client:
            config = client.get_model_config(model).config
        return grpc_frame(from_config(config).request.build([image]))
    request = detect_pb2.DetectRequest(image=image, model=model,
                                       skip_cache=shape.cache == "miss")
    if not shape.stream_frames:
        return grpc_frame(request.SerializeToString())
    # A gRPC request body may hold several length-prefixed messages: one stream, whole.
    return b"".join(grpc_frame(m.SerializeToString()) for m in stream_frames(request, shape))


def stream_frames(request: detect_pb2.DetectRequest,
                  shape: Shape) -> list[detect_pb2.DetectStreamRequest]:
    return [detect_pb2.DetectStreamRequest(id=str(i), request=request)
            for i in range(shape.stream_frames)]


def stream_check(front: Front, request: detect_pb2.DetectRequest, shape: Shape,
                 expected: np.ndarray, timeout_s: float) -> dict:
    """One DetectStream of the scenario's frames through the front end, its answers compared
    with the backend's own: h2load never reads the frames it gets back."""
    assert front.channel is not None
    header = ((contract.DECLARED_IMAGES_HEADER, str(shape.stream_frames)),)
    frames = stream_frames(request, shape)
    mismatches = 0
    with front.channel() as channel:
        answers = list(detect_pb2_grpc.DetectorStub(channel).DetectStream(
            iter(frames), metadata=header, timeout=timeout_s))
    for frame, answer in zip(frames, answers, strict=False):
        rows = answer_rows(answer.result.response)
        if (answer.id != frame.id or not answer.result.HasField("response")
                or rows.shape != expected.shape
                or not np.allclose(rows, expected, rtol=1e-4, atol=1e-3)):
            mismatches += 1
    return {"frames": len(frames), "answers": len(answers), "mismatches": mismatches}


def measure(name: str, group: str, front: Front, tritons: list[str], model: str, image: bytes,
            load: Load, tmp: Path, timeout_s: float, batch_model: str | None = None,
            shape: Shape = UNARY) -> dict:
    """One scenario: warm up, then h2load plus the sampling client, with every cross-check."""
    batch_model = batch_model or model
    body = tmp / f"{name}.bin"
    body.write_bytes(request_body(front, tritons, model, image, shape))
    path = contract.DETECT_STREAM_PATH if shape.stream_frames else front.path
    url = front.url + path
    if shape.stream_frames:
        load = dataclasses.replace(load, headers=(
            *load.headers, f"{contract.DECLARED_IMAGES_HEADER}: {shape.stream_frames}"))
    # Warm-up: about a tenth of the images (at least 20), closed loop, with the same headers.
    warm_images = max(20, load.requests * shape.images // 10)
    warmup = dataclasses.replace(
        load, requests=max(load.clients, -(-warm_images // shape.images)), rps_per_client=0.0)
    h2load.run(url, body, warmup, tmp / f"{name}-warmup.log", timeout_s)
    expected = expected_detections(tritons[0], model, image, front.backend_tls)
    checked_stream = None
    if shape.stream_frames and front.channel is not None:
        checked_stream = stream_check(front, detect_pb2.DetectRequest(image=image, model=model),
                                      shape, expected, timeout_s)
    stats = functools.partial(_stats, tls=front.backend_tls)
    pids = front.pids
    before_cpu = {role: sum(cpu_seconds(p) for p in ps) for role, ps in pids.items()}
    before_rows, before_sizes = stats(tritons, batch_model)
    before_model_rows = stats(tritons, model)[0] if batch_model != model else before_rows
    before_metrics = _scrape_all(front.proxy_metrics)
    sampler = None
    if front.channel is not None:
        channel = front.channel()
        sampler = Sampler(channel, image, model, expected)
        sampler.start()
    try:
        result = h2load.run(url, body, load, tmp / f"{name}.log", timeout_s)
    finally:
        samples: dict[str, Any] = (sampler.stop() if sampler
                                   else {"samples": 0, "mismatches": 0, "errors": {}})
        if sampler:
            channel.close()
    after_cpu = {role: sum(cpu_seconds(p) for p in ps) for role, ps in pids.items()}
    after_rows, after_sizes = stats(tritons, batch_model)
    after_model_rows = stats(tritons, model)[0] if batch_model != model else after_rows
    after_metrics = _scrape_all(front.proxy_metrics)
    calls = load.requests + samples["samples"] + sum(samples["errors"].values())
    # The sampling client's calls reach the backend unless the cache answers them.
    sampled_rows = 0 if shape.cached else samples["samples"]
    out = {"scenario": name, "group": group, "model": model, "requests": load.requests,
           **result, "sampled": samples,
           "backend_ok_rows": after_model_rows - before_model_rows - sampled_rows,
           "cpu_ms_per_request": {
               role: round((after_cpu[role] - before_cpu[role]) * 1000 / calls, 3)
               for role in pids},
           "backend_batch_sizes": {k: v - before_sizes.get(k, 0) for k, v in after_sizes.items()
                                   if v - before_sizes.get(k, 0)},
           "batch_model": batch_model}
    if shape != UNARY:
        images = load.requests * shape.images
        out["backend_expected_rows"] = [0, HANDFUL] if shape.cache == "hit" else [images] * 2
        out["backend_sampled_rows"] = sampled_rows
    if shape.cache:
        out["cache"] = shape.cache
    if shape.stream_frames:
        out["images_per_request"] = shape.images
        out["images_per_s"] = round(result["rps"] * shape.images, 1)
        image_count = calls - load.requests + load.requests * shape.images
        out["cpu_ms_per_image"] = {
            role: round((after_cpu[role] - before_cpu[role]) * 1000 / image_count, 3)
            for role in pids}
        out["stream_check"] = checked_stream
    if front.proxy_metrics:
        ok, total = (a - b for a, b in zip(_ok_calls(after_metrics), _ok_calls(before_metrics),
                                              strict=True))
        # The sampling client's calls are counted too.
        out["proxy_calls"] = {"total": total, "ok": ok, "failed": total - ok,
                              "expected_ok": load.requests + samples["samples"]}
        expected_counters = _expected_counters(shape, load.requests, samples["samples"])
        if expected_counters:
            before, after = _counters(before_metrics), _counters(after_metrics)
            out["proxy_counters"] = {k: after[k] - before[k] for k in expected_counters}
            out["expected_counters"] = expected_counters
    return out


def failures(result: dict) -> list[str]:
    problems = []
    low, high = result.get("backend_expected_rows", [result["requests"]] * 2)
    if not low <= result["backend_ok_rows"] <= high:
        wanted = str(low) if low == high else f"{low} to {high}"
        problems.append(f"backend answered {result['backend_ok_rows']} rows for "
                        f"{result['requests']} requests, not {wanted}")
    calls = result.get("proxy_calls")
    if calls and (calls["ok"] != calls["expected_ok"] or calls["failed"]):
        problems.append(f"proxy counted {calls}")
    for counter, (low, high) in result.get("expected_counters", {}).items():
        counted = result["proxy_counters"][counter]
        if not low <= counted <= high:
            problems.append(f"proxy counted {counted} {counter}, not {low} to {high}")
    checked = result.get("stream_check")
    if checked and (checked["mismatches"] or checked["answers"] != checked["frames"]):
        problems.append(f"a checked stream's answers: {checked}")
    if result["http_not_200"]:
        problems.append(f"{result['http_not_200']} HTTP answers were not 200")
    sampled = result["sampled"]
    if sampled["mismatches"] or sampled["errors"]:
        problems.append(f"sampled answers: {sampled}")
    return problems


def median_rounds(results: list[dict]) -> list[dict]:
    """One result per scenario: the round with the median front CPU per request, carrying
    every round's figure so the report can show the spread."""
    by_name: dict[str, list[dict]] = {}
    for r in results:
        by_name.setdefault(r["scenario"], []).append(r)
    merged = []
    for rounds in by_name.values():
        ordered = sorted(rounds, key=lambda r: r["cpu_ms_per_request"]["front"])
        chosen = dict(ordered[len(ordered) // 2])
        if len(rounds) > 1:
            chosen["rounds"] = {"front_cpu_ms_per_request": [r["cpu_ms_per_request"]["front"]
                                                             for r in rounds],
                                "rps": [r["rps"] for r in rounds]}
        merged.append(chosen)
    return merged


OVERLOAD_MULTIPLES = (0.5, 1.0, 2.0, 3.0, 5.0)


def overload_curve(args: argparse.Namespace, tmp: Path, image: bytes) -> dict:
    """(g): the stack of `make run` at 0.5x to 5x its capacity, open loop, every call with a
    deadline: what it serves, what it refuses and how fast, what arrives too late."""
    name = "overload"
    with stack_front(tmp) as (front, _):
        body = tmp / f"{name}.bin"
        body.write_bytes(request_body(front, [], "face_detector", image))
        url = front.url + front.path
        closed = h2load.run(url, body, Load(args.face_requests, 2, 8), tmp / f"{name}-cap.log",
                            args.timeout)
        capacity = closed["rps"]
        points = []
        for multiple in OVERLOAD_MULTIPLES:
            rate = multiple * capacity
            calls = max(20, int(rate * args.overload_seconds))
            load = Load(calls, 4, 256, rps_per_client=rate / 4,
                        headers=(f"grpc-timeout: {args.overload_deadline_s}S",))
            before = [s for port in front.proxy_metrics for s in scrape(port)]
            result = h2load.run(url, body, load, tmp / f"{name}-{multiple}.log", args.timeout)
            after = [s for port in front.proxy_metrics for s in scrape(port)]
            delta = functools.partial(_increase, before, after)
            count = "rpc_server_duration_milliseconds_count"
            ok = delta(count, status="OK")
            refused = delta(count, status="RESOURCE_EXHAUSTED")
            fast = delta("rpc_server_duration_milliseconds_bucket", status="RESOURCE_EXHAUSTED",
                         le="20")
            points.append({
                "multiple": multiple, "offered_rps": round(rate, 1), "calls": calls,
                "goodput_rps": round(ok / result["elapsed_s"], 1),
                "ok": int(ok), "refused": int(refused),
                "late": int(delta(count, status="DEADLINE_EXCEEDED")
                            + delta(count, status="CANCELLED")),
                "other": int(delta(count) - ok - refused - delta(count, status="DEADLINE_EXCEEDED")
                             - delta(count, status="CANCELLED")),
                "refused_within_20ms": round(fast / refused, 4) if refused else None,
                "latency_ms": result["latency_ms"], "elapsed_s": result["elapsed_s"]})
            print(f"  overload {multiple}x: {points[-1]['goodput_rps']} goodput RPS "
                  f"of {rate:.1f} offered", file=sys.stderr)
    return {"scenario": name, "group": "overload", "model": "face_detector",
            "capacity_rps": capacity, "deadline_s": args.overload_deadline_s,
            "points": points}


def run_all(args: argparse.Namespace, tmp: Path) -> dict:
    image = args.image.read_bytes()
    n = args.requests
    closed = Load(n, args.clients, args.streams)
    results: list[dict] = []
    with localtriton(tmp) as (triton, backend):
        tritons = [triton]
        pid = backend.popen.pid

        def add(name: str, group: str, front_cm, model: str = "null_detector", load=closed,
                shape: Shape = UNARY, batch_model: str | None = None):
            with front_cm as front:
                front.pids.setdefault("localtriton", [pid])
                results.append(measure(name, group, front, tritons, model, image, load, tmp,
                                       args.timeout, batch_model=batch_model, shape=shape))
            print(f"  {name}: {results[-1]['rps']} RPS, p50 {results[-1]['latency_ms']['p50']} ms",
                  file=sys.stderr)

        # (a), (b): serving overhead on null_detector, closed loop, in interleaved rounds so
        # that drift of a shared machine hits every scenario alike; the median round counts.
        for _ in range(args.rounds):
            add("proxy", "overhead", proxy_front(tmp, triton, NO_AGGREGATION))
            add("proxy+aggregation", "overhead",
                proxy_front(tmp, triton, ("--batch-max-wait-us", str(args.batch_wait_us))))
            add("floor", "overhead",
                baseline_front(tmp, triton, "passthrough_floor", sampled=False))
            add("client-per-request", "overhead",
                baseline_front(tmp, triton, "baseline_client_per_request"))
        results[:] = median_rounds(results)
    # (a) across a TLS hop: the same two against a backend that serves TLS only.
    certs = make_certs(tmp / "backend-certs")
    with localtriton(tmp, tls=certs) as (triton, backend):
        tritons, pid = [triton], backend.popen.pid
        for _ in range(args.rounds):
            add("proxy tls", "overhead-tls", tls_egress_front(tmp, triton, certs))
            add("client-per-request tls", "overhead-tls",
                baseline_front(tmp, triton, "baseline_client_per_request", tls=certs))
    results[:] = median_rounds(results)
    with localtriton(tmp) as (triton, backend):
        tritons, pid = [triton], backend.popen.pid
        # Open loop: the same arrival rate for each, half of what the floor sustained.
        floor_rps = next(r["rps"] for r in results if r["scenario"] == "floor")
        rate = max(1.0, round(floor_rps * args.open_loop_share / args.clients))
        open_load = Load(n, args.clients, 64, rps_per_client=rate)
        add("proxy open-loop", "open-loop", proxy_front(tmp, triton, NO_AGGREGATION),
            load=open_load)
        add("proxy+aggregation open-loop", "open-loop",
            proxy_front(tmp, triton, ("--batch-max-wait-us", str(args.batch_wait_us))),
            load=open_load)
        add("floor open-loop", "open-loop",
            baseline_front(tmp, triton, "passthrough_floor", sampled=False), load=open_load)
        # (c): latency added at low concurrency, one call at a time.
        one = Load(args.latency_requests, 1, 1)
        add("direct", "latency", direct_front(triton), load=one)
        add("floor c=1", "latency",
            baseline_front(tmp, triton, "passthrough_floor", sampled=False), load=one)
        add("proxy c=1", "latency", proxy_front(tmp, triton, NO_AGGREGATION), load=one)
        add("proxy+aggregation c=1", "latency",
            proxy_front(tmp, triton, ("--batch-max-wait-us", str(args.batch_wait_us))), load=one)
        add("envoy+proxy c=1", "latency", envoy_front(tmp, triton, 1), load=one)
        # (h): the result cache and DetectStream on null_detector, where the proxy's own cost
        # shows. The cache-off row is also the unary side of stream vs unary: streams of
        # STREAM_FRAMES frames, as many images in flight (a window of 8 per stream).
        add("proxy cache off", "cache", proxy_front(tmp, triton, (*NO_AGGREGATION, *CACHE_OFF)),
            shape=Shape(cache="off"))
        streamed = Shape(stream_frames=STREAM_FRAMES, cache="off")
        add(f"proxy stream x{STREAM_FRAMES}", "stream",
            proxy_front(tmp, triton, (*NO_AGGREGATION, *CACHE_OFF)),
            load=stream_load(closed), shape=streamed)
        add("proxy cache miss", "cache", proxy_front(tmp, triton, (*NO_AGGREGATION, *CACHE_ON)),
            shape=Shape(cache="miss"))
        add("proxy cache hit", "cache", proxy_front(tmp, triton, (*NO_AGGREGATION, *CACHE_ON)),
            shape=Shape(cache="hit"))
        print(f"  (h) {cache_and_stream_ratios(results)}", file=sys.stderr)
        if not args.smoke:
            # Stream vs unary on face_detector, where the backend's cost dominates; half the
            # face_detector calls of (d) keep it to about half a minute.
            face = Load(max(STREAM_FRAMES * 2, args.face_requests // 2), 2, 8)
            add("face_detector unary", "stream",
                proxy_front(tmp, triton, (*NO_AGGREGATION, *CACHE_OFF)), model="face_detector",
                load=face, shape=Shape(cache="off"), batch_model="centerface")
            add(f"face_detector stream x{STREAM_FRAMES}", "stream",
                proxy_front(tmp, triton, (*NO_AGGREGATION, *CACHE_OFF)), model="face_detector",
                load=stream_load(face), shape=streamed, batch_model="centerface")
            # (e): one proxy process vs two, behind Envoy.
            heavy = Load(n, args.clients, args.streams * 2)
            add("envoy+proxy", "processes", envoy_front(tmp, triton, 1), load=heavy)
            add("envoy+proxy x2", "processes", envoy_front(tmp, triton, 2), load=heavy)
    if not args.smoke:
        # (d): face_detector through the whole stack, on the benchmark image and on phone
        # photos, each against its in-process pipeline limit.
        with stack_front(tmp) as (front, stack_tritons):
            load = Load(args.face_requests, 2, 8)
            for photo in face_images(args):
                results.append(measure(face_scenario(args, photo), "face", front, stack_tritons,
                                       "face_detector", photo.read_bytes(), load, tmp,
                                       args.timeout, batch_model="centerface"))
                print(f"  {results[-1]['scenario']}: {results[-1]['rps']} RPS", file=sys.stderr)
    overload = None if args.smoke else overload_curve(args, tmp, image)
    # (f): localtriton against the genuine tritonserver (CPU build), one proxy in front of
    # each in turn; the backend's CPU includes its Python backend stub processes.
    models = [("null_detector", closed, "null_detector")]
    if not args.smoke:
        models.append(("face_detector", Load(args.face_requests, 2, 8), "centerface"))
    for model, load, batch_model in models:
        for kind in BACKENDS:
            with triton_server(kind, tmp) as (url, server), \
                    proxy_front(tmp, url, NO_AGGREGATION) as front:
                front.pids[kind] = [server.popen.pid]
                results.append(measure(f"{kind} {model}", "backends", front, [url], model,
                                       image, load, tmp, args.timeout, batch_model=batch_model))
            print(f"  {kind} {model}: {results[-1]['rps']} RPS", file=sys.stderr)
    limits = None if args.smoke else {
        face_scenario(args, photo): pipeline_limit.measure(photo, args.limit_seconds)
        for photo in face_images(args)}
    return {"results": results, "pipeline_limit": limits, "overload": overload}


def cache_and_stream_ratios(results: list[dict]) -> str:
    """(h)'s ratios in one line, for the console: the report has them in full."""
    s = {r["scenario"]: r for r in results}
    off, miss, hit = s["proxy cache off"], s["proxy cache miss"], s["proxy cache hit"]
    stream = s[f"proxy stream x{STREAM_FRAMES}"]

    def front(r: dict) -> float:
        return float(r["cpu_ms_per_request"]["front"])

    return (f"proxy CPU per call vs no cache: hit {front(hit) / front(off):.2f}x, "
            f"miss {front(miss) / front(off):.2f}x; stream / unary: images/s "
            f"{stream['images_per_s'] / off['rps']:.2f}x, proxy CPU per image "
            f"{stream['cpu_ms_per_image']['front'] / front(off):.2f}x")


def stream_load(unary: Load) -> Load:
    """The DetectStream counterpart of a closed ``unary`` load: as many images (in calls of
    STREAM_FRAMES) and as many in flight (each stream has a window of STREAM_WINDOW)."""
    return Load(max(unary.clients, unary.requests // STREAM_FRAMES), unary.clients,
                max(1, unary.streams // STREAM_WINDOW))


def face_images(args: argparse.Namespace) -> list[Path]:
    """The benchmark image and the phone photos (12, 4 and 1 MP JPEGs) beside it."""
    return [args.image, *(args.image.parent / name for name in PHONE_PHOTOS)]


def face_scenario(args: argparse.Namespace, photo: Path) -> str:
    return "stack face_detector" + ("" if photo == args.image else f" {photo.name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="per throughput scenario")
    parser.add_argument("--clients", type=int, default=4, help="h2load connections")
    parser.add_argument("--streams", type=int, default=8, help="concurrent streams per connection")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of the closed-loop overhead scenarios")
    parser.add_argument("--latency-requests", type=int, default=1000,
                        help="sequential calls per low-concurrency latency scenario")
    parser.add_argument("--face-requests", type=int, default=400,
                        help="face_detector calls through the whole stack")
    parser.add_argument("--open-loop-share", type=float, default=0.5,
                        help="open-loop arrival rate as a share of the floor's closed-loop RPS")
    parser.add_argument("--batch-wait-us", type=int, default=2000,
                        help="--batch-max-wait-us of the aggregation scenarios")
    parser.add_argument("--limit-seconds", type=float, default=8.0,
                        help="duration of each in-process pipeline limit")
    parser.add_argument("--overload-seconds", type=float, default=15.0,
                        help="duration of each point of the overload curve")
    parser.add_argument("--overload-deadline-s", type=int, default=5,
                        help="deadline (grpc-timeout) of every call of the overload curve")
    parser.add_argument("--image", type=Path, default=ROOT / "build" / "testdata" / "coffee.png")
    parser.add_argument("--timeout", type=float, default=300, help="limit per h2load run, s")
    parser.add_argument("--smoke", action="store_true",
                        help="small, fast run for CI: fewer calls, null_detector only, "
                             "no (d)/(e)/(g) scenarios")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtest" / "results" / "bench")
    parser.add_argument("--report", type=Path, default=ROOT / "loadtest" / "RESULTS.md",
                        help="where a full run writes the report")
    args = parser.parse_args(argv)
    if shutil.which("h2load") is None:
        raise SystemExit("h2load not found: apt-get install nghttp2-client")
    if args.smoke:
        args.requests = min(args.requests, 200)
        args.latency_requests = min(args.latency_requests, 100)
        args.rounds = 1
    args.requests = min(args.requests, 100_000)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        data = run_all(args, Path(tmp))
    given = argv if argv is not None else sys.argv[1:]
    command = " ".join(["python", "-m", "detect_loadtest.bench", *given])
    data = {"command": command, "duration_s": round(time.monotonic() - started, 1),
            "machine": {"cpus": len(os.sched_getaffinity(0)),
                        "python": platform.python_version(), "grpcio": grpc.__version__,
                        "h2load": h2load.version()},
            "image": {"name": args.image.name, "bytes": args.image.stat().st_size}, **data}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.out / "bench.md").write_text(report.table(data))
    if not args.smoke:
        args.report.write_text(report.render(data))
        print(f"report: {args.report}", file=sys.stderr)
    print((args.out / "bench.md").read_text())
    failed = {r["scenario"]: failures(r) for r in data["results"] if failures(r)}
    for point in (data.get("overload") or {}).get("points", []):
        if point["other"]:
            failed[f"overload {point['multiple']}x"] = [f"{point['other']} calls failed "
                                                       "other than refused or late"]
    if failed:
        print(f"calls failed: {json.dumps(failed, indent=2)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
