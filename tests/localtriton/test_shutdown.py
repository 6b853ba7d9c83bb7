"""SIGTERM drains: in-flight requests finish, new connections are refused, exit code 0."""

from __future__ import annotations

import signal
import threading
import time

import tritonclient.grpc as grpcclient

from detector_client import image_input
from servers import localtriton


def test_sigterm_finishes_in_flight_requests(tmp_path, images):
    with localtriton(tmp_path) as (url, proc):
        results: list = []

        def slow_call() -> None:
            with grpcclient.InferenceServerClient(url) as client:
                try:
                    batch = image_input(*[images["astronaut.png"]] * 8)
                    results.append(client.infer("face_detector", [batch]))
                except Exception as exc:  # recorded and asserted on below
                    results.append(exc)

        callers = [threading.Thread(target=slow_call) for _ in range(3)]
        for t in callers:
            t.start()
        time.sleep(0.3)  # the calls are queued or executing
        proc.popen.send_signal(signal.SIGTERM)
        for t in callers:
            t.join(30)
        assert proc.popen.wait(30) == 0
        assert len(results) == 3
        for result in results:
            assert not isinstance(result, Exception), result
            assert list(result.as_numpy("num_detections")[:, 0]) == [1] * 8
        assert "draining" in proc.log()
