"""Start real server processes on loopback ports for tests, and always stop them."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = ROOT / "model_repository"
TESTDATA = ROOT / "build" / "testdata"
DOWNLOADS = ROOT / "build" / "downloads"


# Ports for servers come from below the kernel's ephemeral range (32768+ by default): a
# port picked there could be taken as the local port of some outgoing connection between
# the moment it is picked and the moment the server binds it.
_PORTS = list(range(20000, 32000))
random.shuffle(_PORTS)


def free_port() -> int:
    while _PORTS:
        port = _PORTS.pop()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port left in 20000-32000")


@dataclass
class Process:
    popen: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """``SIGKILL`` is a crash: it takes the process's children with it, as a container's
        end does (tritonserver's Python-backend stubs would outlive it otherwise)."""
        if self.popen.poll() is None:
            if sig == signal.SIGKILL:
                self.kill_group()
            else:
                self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_group()
                self.popen.wait()
        return self.popen.returncode

    def kill_group(self) -> None:
        """SIGKILL to the process and everything it started (its own process group)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)


@contextlib.contextmanager
def running(args: list[str], log_path: Path, ready: Callable[[], bool],
            timeout: float = 60.0, env: dict[str, str] | None = None) -> Iterator[Process]:
    """Run ``args`` until the block exits; fail with the process log if it never gets ready."""
    log_file = open(log_path, "wb")
    # Its own process group: whatever it starts can be stopped with it (Process.kill_group).
    popen = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT,
                             env={**os.environ, **(env or {})}, start_new_session=True)
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
        proc.kill_group()  # anything it left behind
        log_file.close()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str = "condition") -> float:
    """Seconds until ``predicate()`` held; AssertionError if it did not within ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"{what} not met within {timeout}s")


def triton_client(url: str, tls: Path | None = None):
    """A tritonclient gRPC client for ``url``; with ``tls`` (a directory made by
    ``detect_stack.stack.make_certs``) over TLS, trusting its ``ca.crt`` and presenting the
    client certificate ``client-alpha`` for servers started with ``--grpc-use-ssl-mutual``."""
    import tritonclient.grpc as grpcclient

    if tls is None:
        return grpcclient.InferenceServerClient(url)
    return grpcclient.InferenceServerClient(
        url, ssl=True, root_certificates=str(tls / "ca.crt"),
        private_key=str(tls / "client-alpha.key"),
        certificate_chain=str(tls / "client-alpha.crt"))


def localtriton_ready(url: str, tls: Path | None = None) -> bool:
    """Whether the Triton-protocol server at ``url`` is ready (over TLS with ``tls``)."""
    client = triton_client(url, tls)
    try:
        return client.is_server_ready()
    finally:
        client.close()


# The Triton servers every protocol-facing test runs against: our CPU server, and the genuine
# tritonserver (CPU build, `make triton`) started by `python -m detect_localtriton.tritonserver`.
LOCALTRITON = "localtriton"
TRITON = "tritonserver"
BACKENDS = (LOCALTRITON, TRITON)
_MODULES = {LOCALTRITON: "detect_localtriton", TRITON: "detect_localtriton.tritonserver"}


def tls_flags(tls: Path) -> tuple[str, ...]:
    """tritonserver's flags serving gRPC over TLS with the server certificate of a directory
    made by ``detect_stack.stack.make_certs`` (valid for 127.0.0.1 and localhost)."""
    return ("--grpc-use-ssl", "true", "--grpc-server-cert", str(tls / "server.crt"),
            "--grpc-server-key", str(tls / "server.key"))


@contextlib.contextmanager
def triton_server(kind: str, tmp_path: Path, *flags: str, port: int | None = None,
                  repository: Path = MODEL_REPOSITORY,
                  tls: Path | None = None) -> Iterator[tuple[str, Process]]:
    """A real Triton-protocol server of ``kind`` serving the project's (or another) model
    repository. Both take tritonserver's flag names. With ``tls`` (a certificate directory,
    ``detect_stack.stack.make_certs``) it serves TLS only, and is probed through it."""
    port = port or free_port()
    url = f"127.0.0.1:{port}"
    args = [sys.executable, "-m", _MODULES[kind], "--model-repository", str(repository),
            "--grpc-port", str(port), *(tls_flags(tls) if tls else ()), *flags]
    # tritonserver may report ready over gRPC a moment before its metrics endpoint listens.
    metrics = next((flags[i + 1] for i, f in enumerate(flags[:-1]) if f == "--metrics-port"),
                   None)

    def ready() -> bool:
        if not localtriton_ready(url, tls):
            return False
        if metrics is not None:
            urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=2).close()
        return True

    with running(args, tmp_path / f"{kind}-{port}.log", ready) as proc:
        yield url, proc


def localtriton(tmp_path: Path, *flags: str, port: int | None = None,
                repository: Path = MODEL_REPOSITORY, tls: Path | None = None):
    """A real ``python -m detect_localtriton``."""
    return triton_server(LOCALTRITON, tmp_path, *flags, port=port, repository=repository,
                         tls=tls)


def null_models(directory: Path, names: Iterable[str]) -> Path:
    """A model repository of light detectors: ``null_detector`` (one fixed box, no compute)
    under each of ``names``, for tests about which server holds which model."""
    import shutil

    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copytree(MODEL_REPOSITORY / "null_detector", directory / name)
        config = directory / name / "config.pbtxt"
        config.write_text(config.read_text().replace('name: "null_detector"', f'name: "{name}"'))
    return directory


VERSIONED_DETECTOR = Path(__file__).with_name("models") / "versioned_detector.py"


def versioned_models(directory: Path, versions: int = 5, shifted: Iterable[int] = (3,),
                     failing: Iterable[int] = (4,), slow: Iterable[int] = (5,)) -> Path:
    """A model repository with ``versioned_detector``: versions 1..``versions`` served at
    once, the same answer from each but the ``shifted`` ones (another box), the ``failing``
    ones (every request fails) and the ``slow`` ones (0.3 s more per execution)."""
    import shutil

    model = directory / "versioned_detector"
    for version in range(1, versions + 1):
        (model / str(version)).mkdir(parents=True, exist_ok=True)
        shutil.copy(VERSIONED_DETECTOR, model / str(version) / "model.py")
    shutil.copy(MODEL_REPOSITORY / "null_detector" / "labels.txt", model / "labels.txt")
    config = (MODEL_REPOSITORY / "null_detector" / "config.pbtxt").read_text()
    config = config.replace('name: "null_detector"', 'name: "versioned_detector"')
    config += (f"version_policy: {{ all {{ }} }}\n"
               f'parameters {{ key: "shifted_versions" value: {{ string_value: '
               f'"{",".join(map(str, shifted))}" }} }}\n'
               f'parameters {{ key: "failing_versions" value: {{ string_value: '
               f'"{",".join(map(str, failing))}" }} }}\n'
               f'parameters {{ key: "slow_versions" value: {{ string_value: '
               f'"{",".join(map(str, slow))}" }} }}\n')
    (model / "config.pbtxt").write_text(config)
    return directory


def health_status(target: str, service: str = "", timeout: float = 2.0) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout).status


def serving(target: str) -> bool:
    from grpc_health.v1 import health_pb2

    return health_status(target) == health_pb2.HealthCheckResponse.SERVING


# The proxies these launchers start expose the benchmark model beside the detector (a
# deployment's default exposes the ensembles only: `make run`, the manifests).
EXPOSED_FOR_BENCHMARKS = "face_detector,null_detector"


@contextlib.contextmanager
def proxy(tmp_path: Path, triton_url: str, *flags: str, port: int | None = None,
          metrics_port: int | None = None,
          wait_serving: bool = True) -> Iterator[tuple[str, Process]]:
    """A real ``python -m detect_proxy`` in front of ``triton_url``; ready once health says
    SERVING."""
    port = port or free_port()
    target = f"127.0.0.1:{port}"
    if not any(f.startswith("--exposed-models") for f in flags):
        flags = ("--exposed-models", EXPOSED_FOR_BENCHMARKS, *flags)
    # Tests and benchmarks send the same few images again and again to measure the backend:
    # the result cache is off unless the caller is about it.
    if not any(f.startswith(("--cache-", "--redis-")) for f in flags):
        flags = ("--cache-ttl-s", "0", *flags)
    args = [sys.executable, "-m", "detect_proxy", "--listen", target, "--triton-url", triton_url,
            "--metrics-port", str(metrics_port or 0), *flags]
    ready = (lambda: serving(target)) if wait_serving else (lambda: health_status(target) >= 0)
    with running(args, tmp_path / f"proxy-{port}.log", ready) as proc:
        yield target, proc


def redis_ping(port: int, timeout: float = 1.0) -> bool:
    """Whether a Redis on loopback ``port`` answers PING (RESP over a plain socket, so the
    check needs no client library)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


@contextlib.contextmanager
def redis_server(tmp_path: Path, port: int | None = None) -> Iterator[tuple[str, Process]]:
    """A real ``redis-server`` on loopback, without persistence (a cache, nothing to keep):
    (URL for ``--redis-url``, process). Pass the ``port`` of a stopped one to bring it back
    where its clients expect it."""
    port = port or free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(tmp_path)]
    with running(args, tmp_path / f"redis-{port}.log", lambda: redis_ping(port)) as proc:
        yield f"redis://127.0.0.1:{port}/0", proc


def tcp_peers(pid: int, remote_port: int | None = None) -> int:
    """Established TCP connections owned by process ``pid`` (to ``remote_port`` if given)."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            remote, state, inode = parts[2], parts[3], parts[9]
            if state == "01" and inode in inodes and (
                    remote_port is None or int(remote.rsplit(":", 1)[1], 16) == remote_port):
                count += 1
    return count
