"""`--processes N`: N proxy processes on consecutive ports, stopped together."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import grpc

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_stack.servers import free_port, running, serving


def _consecutive_free_ports(count: int) -> int:
    for _ in range(50):
        base = free_port()
        sockets = []
        try:
            sockets = []
            for i in range(count):
                s = socket.socket()
                s.bind(("127.0.0.1", base + i))
                sockets.append(s)
            for s in sockets:
                s.close()
            return base
        except OSError:
            for s in sockets:
                s.close()
    raise RuntimeError("no consecutive free ports")


def test_two_processes_serve_and_stop_together(tmp_path, triton_url, images):
    base = _consecutive_free_ports(2)
    targets = [f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"]
    args = [sys.executable, "-m", "detect_proxy", "--processes", "2", "--listen", targets[0],
            "--triton-url", triton_url, "--metrics-port", "0", "--drain-delay-s", "0"]
    with running(args, tmp_path / "proxies.log", lambda: all(serving(t) for t in targets)) as proc:
        children = subprocess.run(["pgrep", "-P", str(proc.popen.pid)], capture_output=True,
                                  text=True).stdout.split()
        assert len(children) == 2
        for target in targets:
            with grpc.insecure_channel(target) as channel:
                response = detect_pb2_grpc.DetectorStub(channel).Detect(
                    detect_pb2.DetectRequest(image=images["astronaut.png"]), timeout=10)
            assert len(response.detections) == 1
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(30) == 0
    time.sleep(0.2)
    for pid in children:
        assert subprocess.run(["kill", "-0", pid], capture_output=True).returncode != 0
