"""`make run` itself, started the way a user starts it, on free ports, for tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from detect_stack.servers import ROOT, TRITON, free_port

PORTS = ("FRONT_PORT", "ADMIN_PORT", "EGRESS_PORT", "TRITON1_PORT", "TRITON2_PORT",
         "PROXY1_PORT", "PROXY2_PORT", "PROXY1_METRICS_PORT", "PROXY2_METRICS_PORT",
         "TRITON1_METRICS_PORT", "TRITON2_METRICS_PORT", "PROMETHEUS_PORT", "REDIS_PORT")
READY = "Ctrl-C stops everything"


@dataclass
class MakeRun:
    process: subprocess.Popen
    ports: dict[str, str]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def channel(self) -> grpc.Channel:
        """A TLS channel to the front door, as the printed instructions make one."""
        ca = (ROOT / "build" / "certs" / "ca.crt").read_bytes()
        return grpc.secure_channel(f"localhost:{self.ports['FRONT_PORT']}",
                                   grpc.ssl_channel_credentials(ca))

    def interrupt(self, timeout: float = 60.0) -> int:
        """What Ctrl-C in a terminal does: SIGINT to the whole process group."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(timeout)

    def descendants(self) -> dict[int, str]:
        """Every process under `make run` (the supervisor puts each program in a process
        group of its own, so the terminal's group does not hold them): pid -> command."""
        out = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,args="], capture_output=True,
                             text=True, check=False)
        rows = [line.split(None, 2) for line in out.stdout.splitlines() if line.strip()]
        children: dict[int, list[tuple[int, str]]] = {}
        for pid_text, ppid_text, *args in rows:
            children.setdefault(int(ppid_text), []).append((int(pid_text), args[0] if args else ""))
        found: dict[int, str] = {}
        stack = [self.process.pid]
        while stack:
            for pid, command in children.get(stack.pop(), []):
                found[pid] = command
                stack.append(pid)
        return found

    def pid_of(self, program: str) -> int:
        """The pid of a supervised program, e.g. "triton1", from supervisorctl."""
        out = subprocess.run([str(ROOT / ".venv" / "bin" / "supervisorctl"), "-c",
                              str(ROOT / "supervisord.conf"), "pid", program],
                             capture_output=True, text=True, check=False)
        return int(out.stdout.strip())

    def alive(self, pids: dict[int, str] | None = None) -> list[str]:
        """Which of ``pids`` (by default: the processes under `make run` now) still run."""
        pids = self.descendants() if pids is None else pids
        return [f"{pid} {args}" for pid, args in pids.items() if Path(f"/proc/{pid}").exists()
                and "<defunct>" not in args]


@contextlib.contextmanager
def make_run(tmp_path: Path, backend: str, timeout: float = 120.0) -> Iterator[MakeRun]:
    ports = {name: str(free_port()) for name in PORTS}
    log = tmp_path / "make-run.log"
    choice = "BACKEND=triton" if backend == TRITON else "BACKEND=localtriton"
    with open(log, "wb") as out:
        process = subprocess.Popen(["make", "--no-print-directory", "run", choice], cwd=ROOT,
                                   stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **ports}, start_new_session=True)
    run = MakeRun(process, ports, log)
    try:
        deadline = time.monotonic() + timeout
        while READY not in run.log():
            assert process.poll() is None, run.log()
            assert time.monotonic() < deadline, run.log()
            time.sleep(0.5)
        yield run
    finally:
        everything = run.descendants()
        with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
            run.interrupt()
        for pid in everything:  # whatever a failed test left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
