"""What shadow traffic costs: the same proxy and backend with the shadow off and at 100%.

One localtriton serving ``versioned_detector`` (versions 1 and 2 answer alike, a Python model
with negligible compute: the serving cost shows), one proxy with an experiment whose shadow
fraction is switched between 0 and 1 by rewriting the experiments file (the proxy re-reads it),
in interleaved rounds so that drift of a shared machine hits both alike. Per round: callers'
latency (p50, p99), CPU per call of the proxy and of the backend (from /proc), and the shadow
calls made. Loopback only, bounded in calls, stops by itself.

    python -m detect_loadtest.shadow_cost            # or: make bench-shadow

It writes ``shadow.json`` and ``shadow.md`` into ``--out`` (loadtest/results/shadow).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_loadtest import results_file
from detect_loadtest.procstat import cpu_seconds
from detect_proxy import contract
from detect_stack.promtext import scrape, value
from detect_stack.servers import (
    ROOT,
    TESTDATA,
    free_port,
    proxy,
    triton_server,
    versioned_models,
)

OUT = ROOT / "loadtest" / "results" / "shadow"
MODEL = "versioned_detector"
FRACTIONS = (0.0, 1.0)


def experiment(fraction: float, concurrency: int) -> str:
    return (f'[{MODEL}]\nsalt = "bench"\n[[{MODEL}.variants]]\nname = "control"\n'
            f'version = "1"\nweight = 1\n[{MODEL}.shadow]\nversion = "2"\n'
            f"fraction = {fraction}\nmax_concurrency = {concurrency}\n")


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(len(ordered) * share) - 1))]


def measure(calls: int, callers: int, rounds: int, tmp: Path) -> list[dict[str, Any]]:
    image = (TESTDATA / "coffee.png").read_bytes()
    path = tmp / "experiments.toml"
    path.write_text(experiment(0.0, callers * 2))
    metrics = free_port()
    rows: list[dict[str, Any]] = []
    with triton_server("localtriton", tmp, repository=versioned_models(tmp / "repository")) \
            as (url, backend), \
            proxy(tmp, url, "--exposed-models", MODEL, "--default-model", MODEL,
                  "--experiments", str(path), "--experiments-refresh-ms", "100",
                  metrics_port=metrics) as (target, front), \
            grpc.insecure_channel(target) as channel:
        stub = detect_pb2_grpc.DetectorStub(channel)
        pids = {"proxy": front.popen.pid, "backend": backend.popen.pid}

        def run(n: int) -> list[float]:
            def one(i: int) -> float:
                start = time.perf_counter()
                stub.Detect(detect_pb2.DetectRequest(image=image), timeout=30,
                            metadata=[(contract.ROUTING_KEY_HEADER, f"caller-{i}")])
                return time.perf_counter() - start
            with ThreadPoolExecutor(callers) as pool:
                return list(pool.map(one, range(n)))

        def shadowed() -> float:
            return value(scrape(metrics), "detect_shadow_calls_total", outcome="OK")

        run(max(20, calls // 5))  # warm-up
        for round_ in range(rounds):
            for fraction in FRACTIONS:
                path.write_text(experiment(fraction, callers * 2))
                time.sleep(0.5)  # re-read within --experiments-refresh-ms
                cpu = {k: cpu_seconds(p) for k, p in pids.items()}
                before = shadowed()
                latencies = run(calls)
                time.sleep(0.5)  # the last shadow calls finish
                rows.append({
                    "round": round_, "shadow_fraction": fraction, "calls": calls,
                    "shadow_calls": int(shadowed() - before),
                    "latency_ms": {"p50": round(statistics.median(latencies) * 1000, 2),
                                   "p99": round(_percentile(latencies, 0.99) * 1000, 2)},
                    "cpu_ms_per_call": {k: round((cpu_seconds(p) - cpu[k]) / calls * 1000, 3)
                                        for k, p in pids.items()}})
                print(f"  round {round_} shadow {fraction:.0%}: p50 "
                      f"{rows[-1]['latency_ms']['p50']} ms, CPU ms/call "
                      f"{rows[-1]['cpu_ms_per_call']}", file=sys.stderr)
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Ratios shadow on / off, median over rounds, each round's pair measured side by side."""
    def ratio(pick: Any) -> float:
        pairs = [(on, off) for on in rows for off in rows
                 if on["round"] == off["round"] and on["shadow_fraction"] == 1.0
                 and off["shadow_fraction"] == 0.0]
        return round(statistics.median(pick(on) / pick(off) for on, off in pairs), 2)

    return {"p50_latency": ratio(lambda r: r["latency_ms"]["p50"]),
            "proxy_cpu_per_call": ratio(lambda r: r["cpu_ms_per_call"]["proxy"]),
            "backend_cpu_per_call": ratio(lambda r: r["cpu_ms_per_call"]["backend"])}


def render(data: dict[str, Any]) -> str:
    lines = ["# Shadow traffic: cost side by side", "", f"Command: `{data['command']}`", "",
             f"{data['callers']} callers, {data['calls']} calls per run, one proxy process and "
             f"one localtriton on {data['environment']['cores']} cores "
             f"({data['environment']['cpu']}); the backend shares the proxy's cores here.", "",
             "| round | shadow | shadow calls | p50 ms | p99 ms | proxy CPU ms/call | "
             "backend CPU ms/call |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in data["results"]:
        lines.append(f"| {r['round']} | {r['shadow_fraction']:.0%} | {r['shadow_calls']} | "
                     f"{r['latency_ms']['p50']} | {r['latency_ms']['p99']} | "
                     f"{r['cpu_ms_per_call']['proxy']} | {r['cpu_ms_per_call']['backend']} |")
    s = data["ratios"]
    lines += ["", f"Shadow at 100% / off (median of rounds): backend CPU per call "
              f"x{s['backend_cpu_per_call']}, proxy CPU per call x{s['proxy_cpu_per_call']}, "
              f"callers' p50 x{s['p50_latency']}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=OUT, help="folder for shadow.json/.md")
    parser.add_argument("--calls", type=int, default=1000, help="calls per run")
    parser.add_argument("--callers", type=int, default=1, help="concurrent callers")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    args = parser.parse_args(argv)
    if args.calls < 10 or args.callers < 1 or args.rounds < 1:
        parser.error("--calls must be at least 10, --callers and --rounds at least 1")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(args.calls, args.callers, args.rounds, Path(tmp))
    given = argv if argv is not None else sys.argv[1:]
    data = {
        "command": shlex.join(["python", "-m", "detect_loadtest.shadow_cost", *given]),
        "calls": args.calls, "callers": args.callers, "rounds": args.rounds,
        "duration_s": round(time.monotonic() - started, 1),
        "environment": results_file.environment(),
        "results": rows,
        "ratios": summary(rows),
    }
    results_file.write(args.out, "shadow", data, render(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
