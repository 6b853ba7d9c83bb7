"""Run Envoy so that stopping it drains it first (the front door of `make run`).

Envoy exits at once on SIGTERM, cutting the calls in flight. Here SIGTERM or SIGINT first
asks Envoy to drain its inbound listener (callers get GOAWAY, new calls go elsewhere or are
refused), waits until no call is in flight on it (or ``--drain-timeout-s``), and only then
stops Envoy: the proxies and backends behind it, stopped after it, finish what they hold.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
import time
import urllib.request

FRONT_ACTIVE = "http.front.downstream_rq_active"


def _admin(port: int, path: str, method: str = "GET") -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    with urllib.request.urlopen(request, timeout=2) as r:
        return r.read().decode()


def _active(port: int) -> int:
    for line in _admin(port, f"/stats?filter=^{FRONT_ACTIVE}$").splitlines():
        return int(line.split(":")[1])
    return 0


def drain(port: int, timeout_s: float) -> None:
    _admin(port, "/drain_listeners?graceful&inboundonly", method="POST")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _active(port) > 0:
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-port", type=int, required=True)
    parser.add_argument("--drain-timeout-s", type=float, default=10.0)
    parser.add_argument("envoy", nargs=argparse.REMAINDER, help="-- envoy and its arguments")
    args = parser.parse_args(argv)
    command = args.envoy[1:] if args.envoy[:1] == ["--"] else args.envoy
    envoy = subprocess.Popen(command)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while envoy.poll() is None and not stop.wait(0.2):
        pass
    if envoy.poll() is None:
        print("envoy: draining callers before stopping", file=sys.stderr, flush=True)
        try:
            drain(args.admin_port, args.drain_timeout_s)
        except OSError as exc:
            print(f"envoy: drain failed ({exc}); stopping", file=sys.stderr, flush=True)
        envoy.terminate()
    return envoy.wait()


if __name__ == "__main__":
    raise SystemExit(main())
