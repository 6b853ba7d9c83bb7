"""Load harness: h2load drives unary gRPC Detect calls; the proxy's metrics say how they ended.

h2load (Debian nghttp2-client) sends a prebuilt gRPC frame (5-byte prefix + a serialized
DetectRequest) over HTTP/2. It does not read grpc-status, so every HTTP 200 counts as a
success there: the real outcome comes from the proxy's own call counter, read before and
after. Also recorded: RPS, latency percentiles (from h2load's per-request log), CPU-seconds
per request of every process (from /proc/<pid>/stat), and the batch-size histogram of the
backend (ModelStatistics). Loopback only; every run is bounded in requests and time.

    make bench-smoke     # < 60 s, also run by CI so the harness keeps working
    .venv/bin/python loadtest/bench.py --requests 2000 --clients 4 --streams 16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the project and its test harness

import grpc  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402

from detect.v1 import detect_pb2  # noqa: E402
from promtext import scrape, value  # noqa: E402
from servers import free_port, localtriton, proxy, running  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def run_h2load(target: str, body: Path, requests: int, clients: int, streams: int,
               log_file: Path, timeout_s: float) -> dict:
    args = ["h2load", "-n", str(requests), "-c", str(clients), "-m", str(streams),
            "-H", "content-type: application/grpc", "-H", "te: trailers",
            "-d", str(body), "--log-file", str(log_file),
            f"http://{target}/detect.v1.Detector/Detect"]
    start = time.monotonic()
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
    elapsed = time.monotonic() - start
    if out.returncode != 0:
        raise RuntimeError(f"h2load failed: {out.stdout}\n{out.stderr}")
    latencies_ms = [int(line.split()[2]) / 1000 for line in log_file.read_text().splitlines()
                    if line.strip()]
    done = next(l for l in out.stdout.splitlines() if l.startswith("requests:"))
    return {"elapsed_s": round(elapsed, 3), "h2load_requests": done.strip(),
            "latencies_ms": latencies_ms}


def batch_histogram(triton_url: str, model: str) -> dict[str, int]:
    with grpcclient.InferenceServerClient(triton_url) as client:
        stats = client.get_inference_statistics(model).model_stats[0]
    return {str(b.batch_size): b.compute_infer.count for b in stats.batch_stats}


def backend_rows(triton_url: str, model: str) -> int:
    """Rows the backend inferred (a batched request counts each of its images)."""
    with grpcclient.InferenceServerClient(triton_url) as client:
        return client.get_inference_statistics(model).model_stats[0].inference_count


@contextlib.contextmanager
def front_end(kind: str, tmp: Path, triton_url: str, flags: tuple[str, ...]):
    """(target, pid, metrics_port) of the server under test: the product or a baseline."""
    if kind == "proxy":
        metrics_port = free_port()
        with proxy(tmp, triton_url, "--log-level", "warning", *flags,
                   metrics_port=metrics_port) as (target, proc):
            yield target, proc.popen.pid, metrics_port
        return
    script = {"client-per-request": "baseline_client_per_request.py",
              "floor": "passthrough_floor.py"}[kind]
    target = f"127.0.0.1:{free_port()}"
    args = [sys.executable, str(ROOT / "loadtest" / script), "--listen", target,
            "--triton-url", triton_url]

    def ready() -> bool:
        with grpc.insecure_channel(target) as channel:
            grpc.channel_ready_future(channel).result(timeout=1)
            return True

    with running(args, tmp / f"{kind}.log", ready) as proc:
        yield target, proc.popen.pid, 0


def scenario(name: str, tmp: Path, triton: tuple[str, int], image: bytes, model: str,
             requests: int, clients: int, streams: int, kind: str,
             flags: tuple[str, ...], timeout_s: float) -> dict:
    triton_url, triton_pid = triton
    body = tmp / f"{name}.bin"
    body.write_bytes(grpc_frame(detect_pb2.DetectRequest(image=image, model=model)
                                .SerializeToString()))
    with front_end(kind, tmp, triton_url, flags) as (target, pid, metrics_port):
        pids = {"front": pid, "localtriton": triton_pid}
        before_metrics = scrape(metrics_port) if metrics_port else []
        before_ok = backend_rows(triton_url, model)
        before_batches = batch_histogram(triton_url, model)
        before_cpu = {k: cpu_seconds(p) for k, p in pids.items()}
        load = run_h2load(target, body, requests, clients, streams, tmp / f"{name}.log",
                          timeout_s)
        after_cpu = {k: cpu_seconds(p) for k, p in pids.items()}
        after_metrics = scrape(metrics_port) if metrics_port else []
        after_ok = backend_rows(triton_url, model)
        after_batches = batch_histogram(triton_url, model)
    calls = "rpc_server_duration_milliseconds_count"
    lat = load.pop("latencies_ms")
    result = {
        "scenario": name, "front": kind, "model": model, "requests": requests,
        "clients": clients, "streams_per_client": streams, "flags": list(flags), **load,
        "rps": round(requests / load["elapsed_s"], 1),
        "latency_ms": {"p50": round(percentile(lat, 50), 3), "p95": round(percentile(lat, 95), 3),
                       "p99": round(percentile(lat, 99), 3),
                       "mean": round(statistics.fmean(lat), 3)},
        # Rows the backend answered successfully: the cross-check h2load cannot make.
        "backend_ok_rows": after_ok - before_ok,
        "cpu_ms_per_request": {k: round((after_cpu[k] - before_cpu[k]) * 1000 / requests, 3)
                               for k in pids},
        "backend_batch_sizes": {k: v - before_batches.get(k, 0) for k, v in after_batches.items()
                                if v - before_batches.get(k, 0)},
    }
    if metrics_port:
        ok = value(after_metrics, calls, status="OK") - value(before_metrics, calls, status="OK")
        total = value(after_metrics, calls) - value(before_metrics, calls)
        result["proxy_calls"] = {"total": int(total), "ok": int(ok), "failed": int(total - ok)}
    return result


def markdown(results: list[dict], command: str) -> str:
    rows = "\n".join(
        f"| {r['scenario']} | {r['model']} | {r['rps']} | {r['latency_ms']['p50']} | "
        f"{r['latency_ms']['p95']} | {r['latency_ms']['p99']} | "
        f"{r.get('proxy_calls', {}).get('ok', '-')} | {r['backend_ok_rows']} | "
        f"{r['cpu_ms_per_request']['front']} | {r['cpu_ms_per_request']['localtriton']} | "
        f"{r['backend_batch_sizes']} |"
        for r in results)
    return f"""# Benchmark

Command: `{command}`

RPS and latencies are from h2load on this (shared, noisy) machine: compare rows of one run,
not absolute numbers across runs. h2load cannot read grpc-status: successes are the
proxy's own count of OK calls and the rows the backend answered.

| scenario | model | RPS | p50 ms | p95 ms | p99 ms | OK (proxy) | OK rows (backend) | front CPU ms/req | backend CPU ms/req | backend batch sizes |
|---|---|---|---|---|---|---|---|---|---|---|
{rows}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--streams", type=int, default=8, help="concurrent streams per client")
    parser.add_argument("--image", type=Path, default=ROOT / "build" / "testdata" / "coffee.png")
    parser.add_argument("--timeout", type=float, default=300, help="limit per scenario, s")
    parser.add_argument("--smoke", action="store_true", help="small, fast run for CI")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtest" / "results" / "bench")
    args = parser.parse_args(argv)
    if shutil.which("h2load") is None:
        raise SystemExit("h2load not found: apt-get install nghttp2-client")
    requests = min(args.requests, 200 if args.smoke else 100_000)
    image = args.image.read_bytes()
    # (name, model, front end, flags): measured side by side against one backend.
    scenarios = [
        ("proxy", "null_detector", "proxy", ()),
        ("proxy+aggregation", "null_detector", "proxy", ("--batch-max-wait-us", "2000")),
        ("floor", "null_detector", "floor", ()),
        ("client-per-request", "null_detector", "client-per-request", ()),
    ]
    if not args.smoke:
        scenarios.append(("proxy face_detector", "face_detector", "proxy", ()))
    results = []
    with tempfile.TemporaryDirectory() as tmp, localtriton(Path(tmp)) as (triton_url, backend):
        for name, model, kind, flags in scenarios:
            results.append(scenario(name, Path(tmp), (triton_url, backend.popen.pid), image,
                                    model, requests, args.clients, args.streams, kind, flags,
                                    args.timeout))
    command = " ".join(["python", "loadtest/bench.py", *(argv if argv is not None else sys.argv[1:])])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps({"command": command, "results": results},
                                                    indent=2) + "\n")
    (args.out / "bench.md").write_text(markdown(results, command))
    print((args.out / "bench.md").read_text())
    failed = [r["scenario"] for r in results if r["backend_ok_rows"] != r["requests"]
              or r.get("proxy_calls", {}).get("ok", r["requests"]) != r["requests"]]
    if failed:
        print(f"calls failed in: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
