"""Soak: the whole stack at moderate load for a long while, resource use sampled throughout.

Starts localtriton x2, proxy x2 and Envoy on loopback (the same harness the tests use),
drives Detect calls through Envoy with TLS from a few client threads for ``--duration``
seconds, and every ``--interval`` seconds records each process's RSS, open file descriptors
and established TCP connections. Writes JSON and a markdown table; "flat" means the last
third of the run is within 10% of the first third (RSS) and no higher (fds, connections).

    make soak            # 10 minutes
    .venv/bin/python -m detect_loadtest.soak --duration 60 --out build/soak-short
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_stack.servers import tcp_peers
from detect_stack.stack import stack

ROOT = Path(__file__).resolve().parent.parent


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _flat(values: list[int], tolerance: float) -> bool:
    third = max(1, len(values) // 3)
    first, last = statistics.median(values[:third]), statistics.median(values[-third:])
    return last <= first * (1 + tolerance)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds of load (max 3600)")
    parser.add_argument("--interval", type=float, default=10, help="seconds between samples")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client threads")
    parser.add_argument("--warmup", type=float, default=60,
                        help="seconds excluded from the flatness check (caches, arenas fill)")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtest" / "results" / "soak")
    args = parser.parse_args(argv)
    duration = min(args.duration, 3600)
    image = (ROOT / "build" / "testdata" / "coffee.png").read_bytes()
    calls = {"ok": 0, "failed": 0}
    samples: list[dict] = []

    with tempfile.TemporaryDirectory() as tmp, stack(Path(tmp)) as s:
        processes = {"envoy": s.envoy.process.popen.pid}
        processes.update({f"proxy{i + 1}": p.popen.pid for i, (_, p) in enumerate(s.proxies)})
        processes.update({f"triton{i + 1}": p.popen.pid for i, (_, p) in enumerate(s.tritons)})
        stop = threading.Event()

        def client() -> None:
            with s.envoy.channel() as channel:
                stub = detect_pb2_grpc.DetectorStub(channel)
                request = detect_pb2.DetectRequest(image=image)
                while not stop.is_set():
                    try:
                        stub.Detect(request, timeout=30)
                        calls["ok"] += 1
                    except grpc.RpcError:
                        calls["failed"] += 1
                    stop.wait(0.1)  # moderate load, not saturation

        start = time.monotonic()
        with ThreadPoolExecutor(args.clients) as pool:
            for _ in range(args.clients):
                pool.submit(client)
            while time.monotonic() - start < duration:
                samples.append({"t": round(time.monotonic() - start, 1), **{
                    name: {"rss_kib": _rss_kib(pid), "fds": _fds(pid),
                           "connections": tcp_peers(pid)}
                    for name, pid in processes.items()}, "calls_ok": calls["ok"]})
                time.sleep(args.interval)
            stop.set()

    summary = {}
    steady = [x for x in samples if x["t"] >= args.warmup] or samples
    for name in processes:
        rss = [x[name]["rss_kib"] for x in steady]
        fds = [x[name]["fds"] for x in steady]
        conns = [x[name]["connections"] for x in steady]
        summary[name] = {
            "rss_kib_first": rss[0], "rss_kib_last": rss[-1], "rss_kib_max": max(rss),
            "fds_min": min(fds), "fds_max": max(fds),
            "connections_min": min(conns), "connections_max": max(conns),
            "flat": _flat(rss, 0.10) and _flat(fds, 0.0) and _flat(conns, 0.0),
        }
    result = {"command": " ".join(["python", "-m", "detect_loadtest.soak", *sys.argv[1:]]),
              "duration_s": duration, "clients": args.clients, "calls": calls,
              "summary": summary, "samples": samples}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = "\n".join(
        f"| {n} | {v['rss_kib_first']} | {v['rss_kib_last']} | {v['rss_kib_max']} | "
        f"{v['fds_min']}–{v['fds_max']} | {v['connections_min']}–{v['connections_max']} | "
        f"{'yes' if v['flat'] else 'NO'} |" for n, v in summary.items())
    (args.out / "soak.md").write_text(f"""# Soak

Command: `{result['command']}`

{duration:.0f} s at {args.clients} client threads (one call per thread at a time, 100 ms
apart) through Envoy with TLS: {calls['ok']} calls succeeded, {calls['failed']} failed.
Sampled every {args.interval:g} s; the table covers the steady state after a
{args.warmup:g} s warm-up. "flat": the last third of the samples is within 10% (RSS) of the
first third and holds no more file descriptors or connections.

| process | RSS first (KiB) | RSS last (KiB) | RSS max (KiB) | open fds | TCP connections | flat |
|---|---|---|---|---|---|---|
{rows}
""")
    print((args.out / "soak.md").read_text())
    return 0 if calls["failed"] == 0 and all(v["flat"] for v in summary.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
