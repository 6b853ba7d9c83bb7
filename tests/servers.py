"""Start real server processes on loopback ports for tests, and always stop them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = ROOT / "model_repository"
TESTDATA = ROOT / "build" / "testdata"
DOWNLOADS = ROOT / "build" / "downloads"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Process:
    popen: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


@contextlib.contextmanager
def running(args: list[str], log_path: Path, ready: Callable[[], bool],
            timeout: float = 60.0, env: dict[str, str] | None = None) -> Iterator[Process]:
    """Run ``args`` until the block exits; fail with the process log if it never gets ready."""
    log_file = open(log_path, "wb")
    popen = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT,
                             env={**os.environ, **(env or {})})
    proc = Process(popen, log_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if popen.poll() is not None:
                raise RuntimeError(f"{args[:3]} exited with {popen.returncode}:\n{proc.log()}")
            try:
                if ready():
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{args[:3]} not ready after {timeout}s:\n{proc.log()}")
            time.sleep(0.2)
        yield proc
    finally:
        proc.stop()
        log_file.close()


def localtriton_ready(url: str) -> bool:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        return client.is_server_ready()
    finally:
        client.close()


@contextlib.contextmanager
def localtriton(tmp_path: Path, *flags: str, port: int | None = None,
                repository: Path = MODEL_REPOSITORY) -> Iterator[tuple[str, Process]]:
    """A real ``python -m localtriton`` serving the project's (or another) model repository."""
    port = port or free_port()
    url = f"127.0.0.1:{port}"
    args = [sys.executable, "-m", "localtriton", "--model-repository", str(repository),
            "--grpc-port", str(port), *flags]
    with running(args, tmp_path / f"localtriton-{port}.log", lambda: localtriton_ready(url)) as proc:
        yield url, proc
