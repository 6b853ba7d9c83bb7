"""Run N proxy processes from one command: one asyncio event loop is one core at most.

Process i listens on the base port + i (and exports metrics on the metrics port + i), so
that Envoy sees every process as its own endpoint and balances calls across them; a shared
port (SO_REUSEPORT) would pin each of Envoy's long-lived HTTP/2 connections to one process.
The parent forwards SIGTERM/SIGINT/SIGUSR1/SIGUSR2 to every worker and exits when they have;
if a worker dies on its own, the others are stopped too, so a supervisor sees the failure.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time

from .config import ProxyConfig

log = logging.getLogger(__name__)


def worker_args(config: ProxyConfig, index: int, argv: list[str]) -> list[str]:
    host, port = config.listen.rsplit(":", 1)
    args = [sys.executable, "-m", "detect_proxy", *argv, "--processes", "1",
            "--listen", f"{host}:{int(port) + index}"]
    if config.metrics_port:
        args += ["--metrics-port", str(config.metrics_port + index)]
    return args


def run(config: ProxyConfig, argv: list[str]) -> int:
    if config.listen.startswith("unix:"):
        raise SystemExit("--processes > 1 needs a host:port --listen address")
    workers = [subprocess.Popen(worker_args(config, i, argv)) for i in range(config.processes)]
    log.info("started %d proxy processes: %s", len(workers), [w.pid for w in workers])

    def forward(sig: int, _frame: object) -> None:
        for w in workers:
            if w.poll() is None:
                w.send_signal(sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, forward)
    while True:
        codes = [w.poll() for w in workers]
        if all(c is not None for c in codes):
            return max(abs(c or 0) for c in codes)
        if any(c not in (None, 0) for c in codes):
            log.error("a proxy process exited with %s; stopping the others", codes)
            forward(signal.SIGTERM, None)
            for w in workers:
                w.wait()
            return 1
        time.sleep(0.2)
