"""Every caller shares the proxy's small pool: 64 concurrent calls, 2 upstream connections."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_stack.servers import proxy, tcp_peers

POOL_SIZE = 2


def test_64_calls_from_8_channels_use_pool_size_connections(tmp_path, triton_url, images):
    triton_port = int(triton_url.rsplit(":", 1)[1])
    with proxy(tmp_path, triton_url, "--pool-size", str(POOL_SIZE)) as (target, proc):
        pid = proc.popen.pid
        channels = [grpc.insecure_channel(target) for _ in range(8)]
        stubs = [detect_pb2_grpc.DetectorStub(c) for c in channels]
        peak = 0
        done = threading.Event()

        def watch() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, tcp_peers(pid, triton_port))
                done.wait(0.02)

        watcher = threading.Thread(target=watch)
        watcher.start()
        request = detect_pb2.DetectRequest(image=images["astronaut.png"])
        try:
            with ThreadPoolExecutor(64) as pool:
                futures = [pool.submit(stubs[i % 8].Detect, request, timeout=60)
                           for i in range(64)]
                results = [f.result() for f in futures]
        finally:
            done.set()
            watcher.join()
            for c in channels:
                c.close()
        assert all(len(r.detections) == 1 for r in results)
        assert peak == POOL_SIZE, f"proxy opened {peak} connections to the backend"
        assert tcp_peers(pid, triton_port) == POOL_SIZE
