"""Wait until the stack is healthy, then show how to use it (the last step of `make run`).

Exits non-zero if the stack does not become healthy in time or the sample call fails, zero
once it has shown how to call the stack; the supervisor keeps the stack running either way.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "build" / "testdata" / "astronaut.png"


def admin(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
        return r.read().decode()


def healthy(port: int) -> tuple[bool, str]:
    try:
        if admin(port, "/ready").strip() != "LIVE":
            return False, "envoy starting"
        clusters = json.loads(admin(port, "/clusters?format=json"))["cluster_statuses"]
    except OSError as exc:
        return False, f"envoy admin unreachable ({exc})"
    summary = []
    ok = True
    for cluster in sorted(clusters, key=lambda c: c["name"]):
        hosts = cluster.get("host_statuses", [])
        up = sum(1 for h in hosts if not any(k.startswith("failed") for k in h["health_status"]))
        summary.append(f"{cluster['name']} {up}/{len(hosts)}")
        ok = ok and hosts and up == len(hosts)
    return ok, ", ".join(summary)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--front", required=True)
    parser.add_argument("--admin-port", type=int, required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--access-log", required=True)
    parser.add_argument("--prometheus-port", type=int, default=0)
    parser.add_argument("--redis-url", default="", help="the proxies' shared cache (empty: none)")
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()

    deadline = time.monotonic() + args.timeout
    ok, why = healthy(args.admin_port)
    while not ok:
        if time.monotonic() > deadline:
            print(f"stack not healthy after {args.timeout:.0f}s: {why}", file=sys.stderr)
            return 1
        time.sleep(0.5)
        ok, why = healthy(args.admin_port)

    detect = str(Path(sys.executable).parent / "detect")  # detect-client's command
    sample = subprocess.run([detect, str(SAMPLE), "--target", args.front, "--ca-file", args.ca],
                            capture_output=True, text=True, cwd=ROOT)
    front_port = args.front.rsplit(":", 1)[1]
    admin = f"http://127.0.0.1:{args.admin_port}"
    prometheus = f"http://127.0.0.1:{args.prometheus_port}"
    sample_path = SAMPLE.relative_to(ROOT)
    print(f"""
=== detect stack is up ({why}) ===
  Detect (TLS)     {args.front}   CA: {args.ca}
  Envoy admin      {admin}  (/clusters, /stats/prometheus, /runtime_modify)
  access log       {args.access_log}
  Prometheus       {prometheus}  (dashboard: observability/dashboard.json)
  result cache     {args.redis_url or "in-process only (redis-server is not installed)"}

Try it:
  grpcurl -cacert {args.ca} localhost:{front_port} list
  base64 -w0 {sample_path} | sed 's/.*/{{"image":"&"}}/' | \\
    grpcurl -cacert {args.ca} -d @ localhost:{front_port} detect.v1.Detector/Detect
  .venv/bin/detect {sample_path} --target {args.front} --ca-file {args.ca}
  .venv/bin/detect models --target {args.front} --ca-file {args.ca}
  .venv/bin/detect build/testdata/astronaut.png --model object_detector \\
    --target {args.front} --ca-file {args.ca}

Sample call:
{(sample.stdout or sample.stderr).rstrip()}

Ctrl-C stops everything.""", flush=True)
    return 0 if sample.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
