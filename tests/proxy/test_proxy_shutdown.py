"""SIGTERM with 32 calls in flight: NOT_SERVING at once, every call completes (and calls
arriving during the drain delay too), then exit 0."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO

import grpc
from grpc_health.v1 import health_pb2
from PIL import Image

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_stack.servers import health_status, proxy


def test_sigterm_during_32_in_flight_calls(tmp_path, triton_url, images):
    with proxy(tmp_path, triton_url) as (target, proc):
        with grpc.insecure_channel(target) as channel:
            stub = detect_pb2_grpc.DetectorStub(channel)
            # A larger image keeps the 32 calls busy well past the moment of SIGTERM.
            big = Image.open(BytesIO(images["astronaut.png"])).convert("RGB").resize((2048, 2048))
            buffer = BytesIO()
            big.save(buffer, format="JPEG", quality=90)
            request = detect_pb2.DetectRequest(image=buffer.getvalue())
            with ThreadPoolExecutor(32) as pool:
                futures = [pool.submit(stub.Detect, request, timeout=60) for _ in range(32)]
                time.sleep(0.3)
                assert sum(f.done() for f in futures) < 32, "calls finished before SIGTERM"
                proc.popen.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + 1
                while health_status(target) != health_pb2.HealthCheckResponse.NOT_SERVING:
                    assert time.monotonic() < deadline, "health still SERVING after SIGTERM"
                    time.sleep(0.02)
                # While balancers take it out of rotation, it keeps answering new calls.
                late = stub.Detect(request, timeout=60)
                results = [f.result() for f in futures] + [late]
        assert all(len(r.detections) == 1 for r in results)
        assert proc.popen.wait(30) == 0
        log = proc.log()
        assert "draining" in log and "stopped" in log
