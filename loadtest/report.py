"""loadtest/RESULTS.md from a bench.json: the figures of the performance report, with targets.

Every figure is a ratio of scenarios measured one after another in the same run, on the same
machine, against the same backend process: absolute numbers from a shared 2-core machine
say little, their ratios say what the design costs or saves.

    python -m detect_loadtest.report loadtest/results/bench/bench.json > loadtest/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _by_name(data: dict) -> dict[str, dict]:
    return {r["scenario"]: r for r in data["results"]}


def _cpu(r: dict, *roles: str) -> float:
    return sum(r["cpu_ms_per_request"].get(role, 0.0) for role in roles)


def _verdict(met: bool) -> str:
    return "**met**" if met else "**missed**"


def table(data: dict) -> str:
    roles = sorted({role for r in data["results"] for role in r["cpu_ms_per_request"]},
                   key=["front", "envoy", "localtriton", "tritonserver"].index)
    head = ("| scenario | load | RPS | p50 ms | p95 ms | p99 ms | OK calls (proxy) | OK rows "
            "(backend) | sampled ok/all | " + " | ".join(f"CPU ms/req {r}" for r in roles)
            + " | backend batch sizes |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in data["results"]:
        calls = r.get("proxy_calls")
        s = r["sampled"]
        lines.append(
            f"| {r['scenario']} | {r['load']} | {r['rps']} | {r['latency_ms']['p50']} | "
            f"{r['latency_ms']['p95']} | {r['latency_ms']['p99']} | "
            f"{calls['ok'] if calls else '-'} | {_rows(r)} | "
            f"{s['samples'] - s['mismatches']}/{s['samples'] + sum(s['errors'].values())} | "
            + " | ".join(str(r["cpu_ms_per_request"].get(role, "-")) for role in roles)
            + f" | {_histogram(r)} |")
    return (f"# Benchmark scenarios\n\nCommand: `{data['command']}`\n\n"
            "h2load cannot read grpc-status: successes are the proxy's own count of OK calls "
            "(the sampling client's calls included) and the rows the backend answered.\n\n"
            + "\n".join(lines) + "\n")


def _rows(r: dict) -> str:
    """Rows the backend answered for the scenario's calls, against what they should be: the
    requests, the images of its streams, or at most a handful where the cache answers."""
    low, high = r.get("backend_expected_rows", [r["requests"]] * 2)
    return f"{r['backend_ok_rows']}/{low}" if low == high else f"{r['backend_ok_rows']} (<= {high})"


def _histogram(r: dict) -> str:
    sizes = sorted(r["backend_batch_sizes"].items(), key=lambda kv: int(kv[0]))
    return ", ".join(f"{size}: {n}" for size, n in sizes) or "-"


def figure_a(s: dict) -> str:
    pool, naive = s["proxy"], s["client-per-request"]
    rps = pool["rps"] / naive["rps"]
    cpu_front = _cpu(naive, "front") / _cpu(pool, "front")
    cpu_all = _cpu(naive, "front", "localtriton") / _cpu(pool, "front", "localtriton")
    return f"""## (a) Shared pool vs a new Triton client per request

`proxy` against `loadtest/baseline_client_per_request.py` (a new channel, a new TCP
connection and HTTP/2 handshake per call, the anti-pattern this project replaces), null_detector.

| | proxy (pool) | client per request | ratio |
|---|---|---|---|
| RPS | {pool['rps']} | {naive['rps']} | {rps:.1f}x |
| front CPU ms/req | {_cpu(pool, 'front')} | {_cpu(naive, 'front')} | {cpu_front:.1f}x |
| front + backend CPU ms/req | {_cpu(pool, 'front', 'localtriton'):.3f} | {_cpu(naive, 'front', 'localtriton'):.3f} | {cpu_all:.1f}x |
| p50 / p99 ms | {pool['latency_ms']['p50']} / {pool['latency_ms']['p99']} | {naive['latency_ms']['p50']} / {naive['latency_ms']['p99']} | |

Target >= 10x: RPS {_verdict(rps >= 10)}, CPU per request {_verdict(cpu_front >= 10)}.

Here a connection per call costs {_cpu(naive, 'front') - _cpu(pool, 'front'):.2f} ms of
front CPU and {_cpu(naive, 'localtriton') - _cpu(pool, 'localtriton'):.2f} ms of backend CPU: a
plaintext loopback TCP connection and HTTP/2 handshake, with no round trip to wait for, are
cheap next to moving the image through two Python gRPC hops. The anti-pattern's real price (TCP and TLS
handshakes over a network, a connection and TLS session per call on Triton, no HTTP/2
multiplexing for Triton's dynamic batcher to work with) does not show on one machine.
{figure_a_tls(s) if "proxy tls" in s else ""}"""


def figure_a_tls(s: dict) -> str:
    pool, naive = s["proxy tls"], s["client-per-request tls"]
    backend = _cpu(naive, "localtriton") / _cpu(pool, "localtriton")
    caller = _cpu(naive, "front") / _cpu(pool, "front", "envoy")
    return f"""
### Across a TLS hop

The same two with a backend that serves TLS only (`--grpc-use-ssl`, an ECDSA P-256
certificate), as between hosts: the proxy sends through Envoy's egress, which keeps
its TLS connections open (`--triton-tls-ca`); the baseline opens a TLS connection per call
(`--triton-ca`), a full handshake each time.

| | proxy + Envoy egress (pool) | client per request | ratio |
|---|---|---|---|
| RPS | {pool['rps']} | {naive['rps']} | {naive['rps'] and pool['rps'] / naive['rps']:.1f}x |
| backend CPU ms/req | {_cpu(pool, 'localtriton')} | {_cpu(naive, 'localtriton')} | {backend:.1f}x |
| caller side CPU ms/req (proxy + egress Envoy, or baseline) | {_cpu(pool, 'front', 'envoy'):.3f} | {_cpu(naive, 'front')} | {caller:.1f}x |
| p50 / p99 ms | {pool['latency_ms']['p50']} / {pool['latency_ms']['p99']} | {naive['latency_ms']['p50']} / {naive['latency_ms']['p99']} | |

Target >= 3x in backend CPU per call {_verdict(backend >= 3)}. A handshake per call costs
the backend {_cpu(naive, 'localtriton') - _cpu(pool, 'localtriton'):.2f} ms here; an ECDSA
handshake on loopback is cheap, and a 466 KB image through TLS and a Python gRPC server
costs the backend more than the handshake. The pool's larger win across hosts is the
round trips a handshake waits for (TCP, then TLS), which loopback does not have.
"""


def figure_b(s: dict) -> str:
    floor, off, on = s["floor"], s["proxy"], s["proxy+aggregation"]
    r_off = _cpu(off, "front") / _cpu(floor, "front")
    r_on = _cpu(on, "front") / _cpu(floor, "front")

    def total(r: dict) -> float:
        return _cpu(r, "front", "localtriton")

    spread = ""
    if "rounds" in off:
        spread = ("\n\nEach row is the median of {n} interleaved rounds; front CPU ms/req per "
                  "round: floor {f}, proxy {p}, with aggregation {a}.").format(
            n=len(off["rounds"]["front_cpu_ms_per_request"]),
            f=floor["rounds"]["front_cpu_ms_per_request"], p=off["rounds"]["front_cpu_ms_per_request"],
            a=on["rounds"]["front_cpu_ms_per_request"])
    return f"""## (b) Proxy CPU per Detect vs the grpc.aio pass-through floor

The floor (`loadtest/passthrough_floor.py`) parses the request, wraps the image into a
minimal ModelInfer and returns Triton's bytes untouched: no validation, no response
translation, no metrics, traces or limits.

| | CPU µs per Detect (front) | vs floor | backend CPU µs/req | front + backend |
|---|---|---|---|---|
| floor | {_cpu(floor, 'front') * 1000:.0f} | 1.00x | {_cpu(floor, 'localtriton') * 1000:.0f} | {total(floor) * 1000:.0f} |
| proxy, aggregation off | {_cpu(off, 'front') * 1000:.0f} | {r_off:.2f}x | {_cpu(off, 'localtriton') * 1000:.0f} | {total(off) * 1000:.0f} |
| proxy, aggregation on | {_cpu(on, 'front') * 1000:.0f} | {r_on:.2f}x | {_cpu(on, 'localtriton') * 1000:.0f} | {total(on) * 1000:.0f} |

Targets: off <= 1.25x {_verdict(r_off <= 1.25)}; on < 1.0x {_verdict(r_on < 1.0)}.
The proxy does per call what the floor skips: the image header check, translating Triton's
tensors into a DetectResponse, a server and a client span, and its metrics. It copies the
image less than the floor (which protobuf-parses it, concatenates and re-serializes it). Aggregation saves the backend a share of its per-call
work, but a batched ModelInfer carries every image of the batch through the proxy all the
same, so the proxy's own CPU per call barely moves.
Backend batch sizes with aggregation: {_histogram(on)} (without: {_histogram(off)}).{spread}
"""


def figure_c(s: dict) -> str:
    direct, f, p, e = s["direct"], s["floor c=1"], s["proxy c=1"], s["envoy+proxy c=1"]
    agg = s["proxy+aggregation c=1"]

    def add(r: dict, q: str) -> float:
        return float(r["latency_ms"][q] - direct["latency_ms"][q])

    return f"""## (c) Latency added at low concurrency

One call at a time ({direct['requests']} calls each), null_detector. `direct` is ModelInfer
sent straight to the backend with the same image; `floor` is the bare grpc.aio hop of (b);
`Envoy + proxy` goes through Envoy's TLS front, the proxy and Envoy's Triton egress.

| path | p50 ms | p99 ms | added p50 ms | added p99 ms |
|---|---|---|---|---|
| direct | {direct['latency_ms']['p50']} | {direct['latency_ms']['p99']} | - | - |
| floor (bare grpc.aio hop) | {f['latency_ms']['p50']} | {f['latency_ms']['p99']} | {add(f, 'p50'):.3f} | {add(f, 'p99'):.3f} |
| proxy | {p['latency_ms']['p50']} | {p['latency_ms']['p99']} | {add(p, 'p50'):.3f} | {add(p, 'p99'):.3f} |
| proxy, aggregation on | {agg['latency_ms']['p50']} | {agg['latency_ms']['p99']} | {add(agg, 'p50'):.3f} | {add(agg, 'p99'):.3f} |
| Envoy + proxy | {e['latency_ms']['p50']} | {e['latency_ms']['p99']} | {add(e, 'p50'):.3f} | {add(e, 'p99'):.3f} |

Target: the proxy adds <= 0.5 ms at p50 {_verdict(add(p, 'p50') <= 0.5)}. Most of it is
carrying the image through one more Python gRPC server and client, which the bare floor
pays too ({add(f, 'p50'):.2f} ms); Envoy's TLS front and egress hop add the rest of the
`Envoy + proxy` row.
"""


FACE = "stack face_detector"
PHONE_12MP = f"{FACE} phone-12mp.jpg"


def figure_d(s: dict, limits: dict) -> str:
    shares, breakdown = [], []
    for name, limit in limits.items():
        stack, steps = s[name], limit["cpu_ms_per_image"]
        cpu = stack["cpu_ms_per_request"]
        stack_cpu = _cpu(stack, "front", "envoy", "localtriton")
        framework = cpu.get("localtriton", 0.0) - steps["total"]
        image = f"{limit['image']} ({limit['bytes'] / 1e6:.2f} MB)"
        shares.append(f"| {image} | {stack['rps']} | {limit['limit_images_per_s']} "
                      f"(batch {limit.get('batch', 1)}) | "
                      f"{stack['rps'] / limit['limit_images_per_s']:.0%} | "
                      f"{steps['total'] / stack_cpu:.0%} | {stack['latency_ms']['p50']} |")
        breakdown.append(f"| {limit['image']} | {cpu.get('envoy')} | {cpu.get('front')} | "
                         f"{steps['preprocess']} | {steps['network']} | {steps['postprocess']} | "
                         f"{framework:.3f} | {stack_cpu:.3f} | {steps['total']} |")
    phone = s.get(PHONE_12MP)
    verdict = ""
    if phone is not None:
        share = phone["rps"] / limits[PHONE_12MP]["limit_images_per_s"]
        verdict = f"Target on 12 MP JPEGs >= 85% {_verdict(share >= 0.85)} ({share:.0%})."
    cores = next(iter(limits.values()))["cores"]
    return f"""## (d) face_detector through the whole stack vs the same pipeline in-process

The stack of `make run` (Envoy TLS front, 2 proxies, 2 backend replicas), closed loop,
against the limit: the ensemble's own steps with the same code and thread settings
(`model_repository/preprocess`, CenterFace in onnxruntime with one intra-op thread,
`model_repository/postprocess`) run in a tight loop in one process, one image at a time
and in batches of 8, the cheaper counting (`loadtest/pipeline_limit.py`), scaled to the
{cores} cores as if they scaled perfectly (an upper bound). Phone photos are JPEGs made from the test images (`stack/phone_photos.py`).

| image | stack images/s | limit images/s | share of the limit | pipeline CPU / stack CPU | stack p50 ms |
|---|---|---|---|---|---|
{chr(10).join(shares)}

{verdict}

CPU ms per image, by process and step. Envoy and proxies are measured in the stack; the
three steps in-process; "backend framework" is what the backends spent beyond those three
steps (scheduling, the ensemble, tensors between steps, gRPC); it can come out below zero
where the stack's batches make CenterFace cheaper per image than the in-process batch of 1.

| image | Envoy | proxies | preprocess | network | postprocess | backend framework | stack total | in-process total |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(breakdown)}

"Pipeline CPU / stack CPU" is the share the stack reaches when every core is busy: it is
independent of how busy the shared machine was, where images per second are not.
"""


def figure_e(s: dict) -> str:
    one, two = s["envoy+proxy"], s["envoy+proxy x2"]
    return f"""## (e) One proxy process vs two, behind Envoy

`--processes 1` vs `--processes 2`, null_detector, {one['load']}.

| | RPS | p50 ms | p99 ms | proxy CPU ms/req | Envoy CPU ms/req | backend CPU ms/req |
|---|---|---|---|---|---|---|
| 1 process | {one['rps']} | {one['latency_ms']['p50']} | {one['latency_ms']['p99']} | {_cpu(one, 'front')} | {_cpu(one, 'envoy')} | {_cpu(one, 'localtriton')} |
| 2 processes | {two['rps']} | {two['latency_ms']['p50']} | {two['latency_ms']['p99']} | {_cpu(two, 'front')} | {_cpu(two, 'envoy')} | {_cpu(two, 'localtriton')} |

RPS ratio 2/1: {two['rps'] / one['rps']:.2f}x.
"""


def _mean_batch(r: dict) -> float:
    sizes = r["backend_batch_sizes"]
    return sum(int(k) * n for k, n in sizes.items()) / max(sum(sizes.values()), 1)


def figure_f(s: dict) -> str:
    rows, ratios, batches = [], {}, {}
    for model in ("null_detector", "face_detector"):
        local, triton = s[f"localtriton {model}"], s[f"tritonserver {model}"]
        for kind, r in (("localtriton", local), ("tritonserver", triton)):
            rows.append(f"| {model} | {kind} | {r['rps']} | {r['latency_ms']['p50']} / "
                        f"{r['latency_ms']['p99']} | {_cpu(r, 'front')} | {_cpu(r, kind)} | "
                        f"{_mean_batch(r):.2f} | {_histogram(r)} |")
        ratios[model] = (_cpu(triton, "tritonserver") / _cpu(local, "localtriton"),
                         triton["rps"] / local["rps"])
        batches[model] = (_mean_batch(local), _mean_batch(triton))
    null_cpu, null_rps = ratios["null_detector"]
    face_cpu, face_rps = ratios["face_detector"]
    return f"""## (f) localtriton vs the genuine Triton server

One proxy (aggregation off) in front of one server at a time: localtriton, then tritonserver
2.51 (CPU build from `nvidia-pytriton`, `make triton`), same repository and load. Backend CPU
counts the whole process tree: Triton's Python backend stubs included. Batch sizes are
null_detector's, or centerface's for face_detector.

| model | backend | RPS | p50 / p99 ms | proxy CPU ms/req | backend CPU ms/req | mean batch | batch sizes |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Triton relative to localtriton: null_detector backend CPU {null_cpu:.2f}x, RPS {null_rps:.2f}x;
face_detector backend CPU {face_cpu:.2f}x, RPS {face_rps:.2f}x. Mean batch, localtriton /
Triton: null_detector {batches['null_detector'][0]:.2f} / {batches['null_detector'][1]:.2f},
centerface {batches['face_detector'][0]:.2f} / {batches['face_detector'][1]:.2f}.

Where localtriton stands in faithfully: the protocol (every RPC the proxy uses, its codes
and messages, statistics and metric names, keepalive enforcement, health, shutdown; see the
README's "Where localtriton differs from Triton"), that concurrent calls are batched, and
therefore the proxy's own cost, which does not depend on the server behind it. Where it does
not: backend cost and batch formation. Both schedulers batch what is queued, but the
batches they form under the same load differ (above), and so does the CPU around them:
Triton's C++ core runs each Python-backend model in a separate stub process fed through
shared memory, and on this CPU build centerface runs in such a stub too
(`localtriton/onnx_runner.py`) rather than in Triton's onnxruntime backend. On a GPU host
the network's cost is another matter entirely: size GPU backends from measurements of
Triton on that GPU, never from localtriton's figures.
"""


def _share(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction:.1%}"


def figure_g(overload: dict) -> str:
    rows = "\n".join(
        f"| {p['multiple']:g}x | {p['offered_rps']} | {p['goodput_rps']} "
        f"({p['goodput_rps'] / overload['capacity_rps']:.0%}) | {p['ok']} | {p['refused']} | "
        f"{p['late']} | {p['other']} | {_share(p['refused_within_20ms'])} | "
        f"{p['latency_ms']['p50']} / {p['latency_ms']['p99']} |"
        for p in overload["points"])
    worst = min(p["goodput_rps"] for p in overload["points"] if p["multiple"] >= 1)
    return f"""## (g) Overload: goodput against offered load

The stack of `make run` (Envoy TLS front, 2 proxies, 2 backend replicas), face_detector,
open loop at multiples of its capacity ({overload['capacity_rps']} RPS, measured closed loop
just before), every call with a {overload['deadline_s']} s deadline. Outcomes from the
proxies' own counters; "late" calls were admitted and missed their deadline, "refused" got
RESOURCE_EXHAUSTED; latency percentiles are h2load's, over all calls.

| offered | RPS | goodput RPS (of capacity) | OK | refused | late | other | refused within 20 ms | p50 / p99 ms |
|---|---|---|---|---|---|---|---|---|
{rows}

From 1x up, goodput never falls below {worst / overload['capacity_rps']:.0%} of capacity: the
excess is refused at once instead of queued past its deadline or sent again.
"""


def _per_image(r: dict, role: str) -> float:
    """CPU ms per image: a stream's calls carry several."""
    return float(r.get("cpu_ms_per_image", r["cpu_ms_per_request"]).get(role, 0.0))


def _lookups(r: dict) -> str:
    counted = r.get("proxy_counters", {})
    return ", ".join(f"{k.removeprefix('cache ')} {n}" for k, n in counted.items()
                     if k.startswith("cache ") and n) or "none"


def _stream_pairs(data: dict) -> list[tuple[dict, dict]]:
    """(unary, stream) rows of (h): each DetectStream scenario with the uncached unary
    scenario of its model."""
    uncached = [r for r in data["results"] if r.get("cache") == "off"]
    pairs = []
    for stream in uncached:
        if stream.get("images_per_request", 1) > 1:
            unary = next((r for r in uncached if r["model"] == stream["model"]
                          and "images_per_request" not in r), None)
            if unary is not None:
                pairs.append((unary, stream))
    return pairs


def figure_h(s: dict, pairs: list[tuple[dict, dict]]) -> str:
    off, miss, hit = s["proxy cache off"], s["proxy cache miss"], s["proxy cache hit"]
    rows = []
    for label, r in (("no cache (`--cache-ttl-s 0`)", off),
                     ("miss (cache on, every call `skip_cache`)", miss),
                     ("hit (cache on, the same image every call)", hit)):
        rows.append(f"| {label} | {r['rps']} | {r['latency_ms']['p50']} / "
                    f"{r['latency_ms']['p99']} | {_cpu(r, 'front')} | "
                    f"{_cpu(r, 'localtriton')} | {_cpu(r, 'front', 'localtriton'):.3f} | "
                    f"{_rows(r)} | {_lookups(r)} |")

    def ratio(r: dict, *roles: str) -> str:
        return f"{_cpu(r, *roles) / _cpu(off, *roles):.2f}x"

    hit_rps = f"{hit['rps'] / off['rps']:.2f}x"
    miss_us = f"{(_cpu(miss, 'front') - _cpu(off, 'front')) * 1000:+.0f}"
    return f"""## (h) Result cache and DetectStream

One proxy at a time (aggregation off) in front of one localtriton, with null_detector: the
model costs next to nothing, so the proxy's own cost shows. A full run also compares streams
on face_detector, where the backend's cost dominates.

### Result cache: no cache, a miss, a hit

Three proxies that differ only in the cache, {off['requests']} calls each, {off['load']}.
h2load sends one body again and again, so with the cache on every call after the first
would be a hit. A miss's whole cost (hashing the image, the lookup, the model, storing the
answer) is produced by setting `skip_cache` on every call: it runs the model and stores its
answer as a miss does. The sampling client never skips the cache: in both cache-on rows its
calls are hits, checked against the backend's own answers. The backend must answer every
call without the cache and with `skip_cache`, and at most a handful with hits, whose lookups
the proxy must count.

| | RPS | p50 / p99 ms | proxy CPU ms/call | backend CPU ms/call | proxy + backend | backend rows | cache lookups |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Relative to no cache, a hit costs the proxy {ratio(hit, 'front')} the CPU, proxy and
backend together {ratio(hit, 'front', 'localtriton')}, at {hit_rps} the RPS. A miss costs
the proxy {ratio(miss, 'front')} ({miss_us} µs per call; what a miss adds is the image's
SHA-256, the lookup and storing the answer) and the backend {ratio(miss, 'localtriton')}.
A hit still pays what every call pays before the model: receiving the image through gRPC,
checking its header, and hashing it for the key.
{_stream_part(pairs)}"""


def _stream_part(pairs: list[tuple[dict, dict]]) -> str:
    if not pairs:
        return ""
    rows, summary = [], []
    for unary, stream in pairs:
        n = stream["images_per_request"]
        for label, r, per_s in (("unary Detect", unary, unary["rps"]),
                                (f"DetectStream of {n}", stream, stream["images_per_s"])):
            rows.append(f"| {r['model']} | {label} | {r['load']} | {per_s} | "
                        f"{r['latency_ms']['p50']} | {_per_image(r, 'front')} | "
                        f"{_per_image(r, 'localtriton')} | {_rows(r)} |")
        front = _per_image(stream, "front") / _per_image(unary, "front")
        backend = _per_image(stream, "localtriton") / _per_image(unary, "localtriton")
        summary.append(f"| {stream['model']} | {stream['images_per_s'] / unary['rps']:.2f}x | "
                       f"{front:.2f}x | {backend:.2f}x |")
    frames = pairs[0][1]["images_per_request"]
    return f"""
### DetectStream vs unary Detect

The same image sent as DetectStream calls of {frames} frames (distinct ids, declared in
`x-detect-images`), each body sent whole by h2load, which then half-closes, and as unary
Detect calls (for null_detector, the no-cache row above). Cache off, aggregation off. The
stream rows keep as many images in flight as the unary ones: the proxy reads at most its
window of 8 frames of a stream ahead of its answers. h2load never reads the frames it gets
back, so the proxy's count of stream images answered OK and the backend's rows must both
come to the images sent, and one stream per scenario is compared frame by frame with the
backend's own answers before the load.

| model | call | load | images/s | p50 ms per call | proxy CPU ms/image | backend CPU ms/image | backend rows |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

| stream / unary | images/s | proxy CPU per image | backend CPU per image |
|---|---|---|---|
{chr(10).join(summary)}

A stream spares what is paid per call (HTTP/2 headers, setting up a call, its span and
metrics) but not what is paid per image (receiving it, checking its header, a ModelInfer):
the proxy's CPU per image says how much of a unary call was per-call overhead.
"""


def aggregation(s: dict) -> str:
    """Whether request aggregation earns being on by default: it must not cost front CPU or
    latency in any load shape measured."""
    pairs = [("closed loop", s["proxy"], s["proxy+aggregation"]),
             ("open loop", s["proxy open-loop"], s["proxy+aggregation open-loop"]),
             ("one at a time", s["proxy c=1"], s["proxy+aggregation c=1"])]
    rows, wins = [], True
    for name, off, on in pairs:
        front = _cpu(on, "front") / _cpu(off, "front")
        backend = _cpu(on, "localtriton") / _cpu(off, "localtriton")
        p50 = on["latency_ms"]["p50"] / off["latency_ms"]["p50"]
        wins &= front <= 1.0 and p50 <= 1.05
        rows.append(f"| {name} | {front:.2f}x | {backend:.2f}x | {p50:.2f}x |")
    verdict = ("wins everywhere measured: on by default is supported" if wins else
               "does not win everywhere measured: it stays off by default "
               "(`--batch-max-wait-us 0`)")
    return f"""## Request aggregation: on or off by default?

Aggregation on (`--batch-max-wait-us` as in the scenarios) relative to off, null_detector:

| load | proxy CPU/req | backend CPU/req | p50 latency |
|---|---|---|---|
{chr(10).join(rows)}

Aggregation {verdict}.
"""


def open_loop(s: dict) -> str:
    rows = [s[n] for n in ("floor open-loop", "proxy open-loop", "proxy+aggregation open-loop")]
    lines = "\n".join(
        f"| {r['scenario']} | {r['rps']} | {r['latency_ms']['p50']} | {r['latency_ms']['p95']} "
        f"| {r['latency_ms']['p99']} | {_cpu(r, 'front')} | {_cpu(r, 'localtriton')} | {_histogram(r)} |"
        for r in rows)
    return f"""## Open loop: latency at a fixed arrival rate

{rows[0]['load']}, null_detector: the same offered load for each.

| scenario | RPS | p50 ms | p95 ms | p99 ms | front CPU ms/req | backend CPU ms/req | batch sizes |
|---|---|---|---|---|---|---|---|
{lines}
"""


def render(data: dict) -> str:
    s = _by_name(data)
    machine = data["machine"]
    parts = [f"""# Performance results

Generated by `loadtest/report.py` from one run of:

    {data['command']}

Machine: {machine['cpus']} cores (shared, noisy), Python {machine['python']}, grpcio
{machine['grpcio']}, {machine['h2load']}. Image: {data['image']['name']}
({data['image']['bytes']} bytes). Backend: localtriton (CPU), and genuine Triton in (f). Run time {data['duration_s']} s.
Compare rows of this page with each other, not with another run or machine.
""", figure_a(s), figure_b(s), figure_c(s)]
    if data.get("pipeline_limit"):
        parts.append(figure_d(s, data["pipeline_limit"]))
    if "envoy+proxy x2" in s:
        parts.append(figure_e(s))
    if "tritonserver face_detector" in s:
        parts.append(figure_f(s))
    if data.get("overload"):
        parts.append(figure_g(data["overload"]))
    if "proxy cache hit" in s:
        parts.append(figure_h(s, _stream_pairs(data)))
    parts += [aggregation(s), open_loop(s), table(data).replace("# Benchmark scenarios", "## Every scenario")]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench_json", type=Path)
    args = parser.parse_args()
    sys.stdout.write(render(json.loads(args.bench_json.read_text())))


if __name__ == "__main__":
    main()
