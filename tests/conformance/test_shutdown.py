"""SIGTERM, as tritonserver handles it: health checks fail, what a model has accepted
finishes, anything new (a new call, or the next step of an ensemble in flight) is refused
with UNAVAILABLE, which a caller may retry on another replica; exit code 0.

Triton keeps its listener open and answers UNAVAILABLE "Server exiting" (health Check
included); localtriton closes its listener, so new connections are refused. Either way a
balancer's health check fails and a new call gets UNAVAILABLE."""

from __future__ import annotations

import signal
import threading
import time

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2

from detect_stack.detector_client import image_input
from detect_stack.servers import health_status, triton_server

STOPPING = "Server is stopping, scheduler for model has stopped accepting new inference requests"


def test_sigterm_finishes_accepted_work_and_refuses_the_rest(tmp_path, images, backend):
    with triton_server(backend, tmp_path) as (url, proc):
        results: dict[str, object] = {}

        def call(key: str, model: str, tensor: grpcclient.InferInput) -> None:
            with grpcclient.InferenceServerClient(url) as client:
                try:
                    results[key] = client.infer(model, [tensor], client_timeout=60)
                except Exception as exc:  # recorded and asserted on below
                    results[key] = exc

        # One long execution of the network itself (about half a second of CPU)...
        pixels = np.zeros((8, 3, 640, 640), dtype=np.float32)
        network = grpcclient.InferInput("input", list(pixels.shape), "FP32")
        network.set_data_from_numpy(pixels)
        callers = [threading.Thread(target=call, args=("network", "centerface", network))]
        # ...and ensembles at various steps.
        batch = image_input(*[images["astronaut.png"]] * 8)
        callers += [threading.Thread(target=call, args=(f"ensemble{i}", "face_detector", batch))
                    for i in range(3)]
        for t in callers:
            t.start()
        time.sleep(0.3)  # the calls are queued or executing
        proc.popen.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        try:
            assert health_status(url) != health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
        late = image_input(images["astronaut.png"])
        call("late", "face_detector", late)
        for t in callers:
            t.join(60)
        assert proc.popen.wait(30) == 0

    assert results.pop("network").as_numpy("heatmap").shape == (8, 1, 160, 160)
    for key, result in results.items():
        if isinstance(result, grpcclient.InferenceServerException):
            assert result.status() == "StatusCode.UNAVAILABLE", (key, result.message())
            assert key == "late" or STOPPING in result.message(), (key, result.message())
        else:
            assert key != "late", "a call that arrived after SIGTERM was served"
            assert set(result.as_numpy("num_detections")[:, 0]) == {1}, key
