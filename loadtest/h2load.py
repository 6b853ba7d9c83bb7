"""h2load as a gRPC load generator: prebuilt frames, closed or open loop, per-request latencies.

h2load (Debian nghttp2-client) sends the same request body on every stream. A unary gRPC
request is a 5-byte prefix and a serialized message, so one file holds a whole call. h2load
does not read grpc-status: every HTTP 200 counts as done there, and callers cross-check the
outcome with the server's own counters.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def grpc_frame(message: bytes) -> bytes:
    """A length-prefixed gRPC message (not compressed)."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


@dataclass(frozen=True)
class Load:
    requests: int
    clients: int = 4
    streams: int = 8  # concurrent streams per client (closed loop: the concurrency)
    rps_per_client: float = 0.0  # > 0: open loop, requests started at this rate per client
    headers: tuple[str, ...] = ()  # extra request headers, e.g. "grpc-timeout: 5S"

    @property
    def open_loop(self) -> bool:
        return self.rps_per_client > 0

    def describe(self) -> str:
        shape = f"{self.clients} connections x {self.streams} streams"
        if self.open_loop:
            return f"open loop at {self.rps_per_client * self.clients:g} RPS ({shape} max)"
        return f"closed loop, {shape}"


def version() -> str:
    out = subprocess.run(["h2load", "--version"], capture_output=True, text=True)
    return out.stdout.strip()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def run(url: str, body: Path, load: Load, log_file: Path, timeout_s: float) -> dict:
    """Run h2load against ``url`` (http:// or https://, loopback only) and summarise it."""
    host = url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
    if not (host.startswith("127.") or host in ("::1", "localhost")):
        raise ValueError(f"load tests only target loopback, not {host}")
    args = ["h2load", "-n", str(load.requests), "-c", str(load.clients),
            "-m", str(load.streams), "-H", "content-type: application/grpc",
            "-H", "te: trailers", "-d", str(body), "--log-file", str(log_file), url]
    if load.open_loop:
        args[1:1] = ["--rps", f"{load.rps_per_client:g}"]
    for header in load.headers:
        args[1:1] = ["-H", header]
    log_file.unlink(missing_ok=True)  # h2load appends
    start = time.monotonic()
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
    elapsed = time.monotonic() - start
    if out.returncode != 0:
        raise RuntimeError(f"h2load failed: {out.stdout}\n{out.stderr}")
    # Log lines: start time (µs since epoch), HTTP status, duration (µs).
    rows = [line.split() for line in log_file.read_text().splitlines() if line.strip()]
    latencies_ms = [int(r[2]) / 1000 for r in rows]
    not_200 = sum(1 for r in rows if r[1] != "200")
    done = next(line for line in out.stdout.splitlines() if line.startswith("requests:"))
    if not latencies_ms:
        raise RuntimeError(f"h2load finished no request: {done}\n{out.stdout}")
    return {
        "load": load.describe(), "elapsed_s": round(elapsed, 3), "h2load_requests": done.strip(),
        "http_not_200": not_200, "rps": round(len(latencies_ms) / elapsed, 1),
        "latency_ms": {q: round(percentile(latencies_ms, n), 3)
                       for q, n in (("p50", 50), ("p95", 95), ("p99", 99))},
    }
