"""The stack of `make run` itself under load. Overload: it serves at capacity, refuses the
excess at once with RESOURCE_EXHAUSTED, amplifies nothing, and recovers as soon as the load
stops. Faults: a replica or a proxy killed with SIGKILL costs no call and is back within
10 s; Ctrl-C lets every call in flight finish (or get UNAVAILABLE) and leaves nothing."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from PIL import Image

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_stack.makerun import make_run
from detect_stack.promtext import scrape, value
from detect_stack.stack import admin_get

ALLOWED = {"OK", "RESOURCE_EXHAUSTED"}


@pytest.fixture(scope="module")
def run(tmp_path_factory, backend):
    with make_run(tmp_path_factory.mktemp("make-run"), backend) as r:
        yield r


@pytest.fixture(scope="module")
def request_(images) -> detect_pb2.DetectRequest:
    """A phone-sized JPEG with one face, so the client's own CPU stays small; sent past the
    result cache (`make run` has one), so that every call loads the backend."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(images["astronaut.png"])).convert("RGB").save(buffer, "JPEG",
                                                                        quality=85)
    return detect_pb2.DetectRequest(image=buffer.getvalue(), skip_cache=True)


def _closed_loop(stub, request, calls: int, workers: int, timeout: float):
    codes: Counter[str] = Counter()
    latencies: list[float] = []

    def one(_):
        start = time.monotonic()
        try:
            stub.Detect(request, timeout=timeout)
            codes["OK"] += 1
            latencies.append(time.monotonic() - start)
        except grpc.RpcError as err:
            codes[err.code().name] += 1

    start = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(calls)))
    return codes, codes["OK"] / (time.monotonic() - start), latencies


def _envoy_stat(run, name: str) -> int:
    for line in admin_get(int(run.ports["ADMIN_PORT"]), f"/stats?filter=^{name}$").splitlines():
        return int(line.split(":")[1])
    return 0


def _proxy_samples(run) -> list:
    return [s for port in ("PROXY1_METRICS_PORT", "PROXY2_METRICS_PORT")
            for s in scrape(int(run.ports[port]))]


@pytest.fixture(scope="module")
def calm(run, request_):
    """The rate the stack sustains with 8 callers, measured before any overload."""
    with run.channel() as channel:
        stub = detect_pb2_grpc.DetectorStub(channel)
        _closed_loop(stub, request_, 16, 8, 30)  # warm up
        codes, rate, latencies = _closed_loop(stub, request_, 60, 8, 30)
    assert codes == {"OK": 60}
    return rate, float(np.median(latencies))


def test_200_callers_with_30s_deadlines_get_served_at_capacity(run, request_, calm):
    calm_rate, _ = calm
    with run.channel() as channel:
        codes, goodput, _ = _closed_loop(detect_pb2_grpc.DetectorStub(channel), request_,
                                         400, 200, 30)
    assert set(codes) <= ALLOWED, codes
    assert goodput >= 0.9 * calm_rate, (goodput, calm_rate, codes)
    # Nothing amplified the load: no replica ejected, no retry, no breaker opened.
    assert _envoy_stat(run, "cluster.triton.outlier_detection.ejections_enforced_total") == 0
    assert _envoy_stat(run, "cluster.triton.upstream_rq_retry") == 0
    assert "CLOSED -> OPEN" not in run.log()
    assert value(_proxy_samples(run), "detect_breaker_state") == 0


def test_open_loop_at_3x_capacity_refuses_the_excess_at_once_and_recovers(run, request_, calm):
    calm_rate, calm_latency = calm
    rate, duration_s, deadline_s = 3 * calm_rate, 20.0, 5.0
    before = _proxy_samples(run)
    codes: Counter[str] = Counter()
    lock = threading.Lock()
    with run.channel() as channel:
        stub = detect_pb2_grpc.DetectorStub(channel)

        def done(future) -> None:
            try:
                future.result()
                code = "OK"
            except grpc.RpcError as err:
                code = err.code().name
            with lock:
                codes[code] += 1

        futures = []
        start = time.monotonic()
        sent = 0
        while (now := time.monotonic()) - start < duration_s:
            while sent < (now - start) * rate:
                future = stub.Detect.future(request_, timeout=deadline_s)
                future.add_done_callback(done)
                futures.append(future)
                sent += 1
            time.sleep(0.005)
        load_ended = time.monotonic()
        # Recovery: a single caller gets a normal answer again within 5 s.
        recovered = None
        while time.monotonic() - load_ended < 10:
            t0 = time.monotonic()
            try:
                stub.Detect(request_, timeout=deadline_s)
                if time.monotonic() - t0 <= max(1.0, 3 * calm_latency):
                    recovered = time.monotonic() - load_ended
                    break
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        for future in futures:
            future.exception()  # wait for every call
    after = _proxy_samples(run)
    assert sum(codes.values()) == sent
    assert set(codes) <= ALLOWED | {"DEADLINE_EXCEEDED"}, codes
    assert codes["DEADLINE_EXCEEDED"] <= 0.02 * sent, codes  # admitted, then too slow: rare
    goodput = codes["OK"] / duration_s
    assert goodput >= 0.75 * calm_rate, (goodput, calm_rate, codes)
    assert codes["RESOURCE_EXHAUSTED"] >= 0.3 * sent, codes
    # Refusals come within milliseconds, measured inside the proxies.

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    refused = delta("rpc_server_duration_milliseconds_count", status="RESOURCE_EXHAUSTED")
    fast = delta("rpc_server_duration_milliseconds_bucket", status="RESOURCE_EXHAUSTED", le="20")
    assert refused >= codes["RESOURCE_EXHAUSTED"] and fast >= 0.99 * refused, (fast, refused)
    assert recovered is not None and recovered < 5.0, recovered
    assert "CLOSED -> OPEN" not in run.log()


def _healthy(run, cluster: str) -> int:
    clusters = json.loads(admin_get(int(run.ports["ADMIN_PORT"]), "/clusters?format=json"))
    for status in clusters["cluster_statuses"]:
        if status["name"] == cluster:
            return sum(1 for h in status.get("host_statuses", [])
                       if not any(k.startswith("failed") for k in h["health_status"]))
    return 0


@pytest.mark.parametrize("program, cluster", [("triton1", "triton"), ("proxy1", "detect_proxy")])
def test_kill_9_under_load_costs_no_call_and_the_process_comes_back(run, request_, program,
                                                                      cluster):
    victim = run.pid_of(program)
    killed_at: list[float] = []

    def kill() -> None:
        os.kill(victim, signal.SIGKILL)
        killed_at.append(time.monotonic())

    with run.channel() as channel:
        timer = threading.Timer(2.0, kill)
        timer.start()
        codes, _, _ = _closed_loop(detect_pb2_grpc.DetectorStub(channel), request_, 240, 8, 30)
        timer.join()
    assert codes == {"OK": 240}, codes
    while _healthy(run, cluster) < 2:
        assert time.monotonic() - killed_at[0] < 10, f"{program} not back and healthy"
        time.sleep(0.2)
    assert run.pid_of(program) != victim


def test_ctrl_c_under_load_finishes_in_flight_calls_and_leaves_nothing(run, request_):
    """Last in this module: it stops the stack."""
    outcomes: list[tuple[str, float]] = []
    lock = threading.Lock()
    deadline_s = 30.0
    everything = run.descendants()

    def caller() -> None:
        with run.channel() as channel:
            stub = detect_pb2_grpc.DetectorStub(channel)
            for _ in range(30):
                start = time.monotonic()
                try:
                    stub.Detect(request_, timeout=deadline_s)
                    code = "OK"
                except grpc.RpcError as err:
                    code = err.code().name
                with lock:
                    outcomes.append((code, time.monotonic() - start))
                if code != "OK":
                    return

    callers = [threading.Thread(target=caller) for _ in range(8)]
    for t in callers:
        t.start()
    time.sleep(2.0)
    interrupted = time.monotonic()
    run.interrupt()
    for t in callers:
        t.join(60)
    codes = Counter(code for code, _ in outcomes)
    assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
    assert codes["OK"] >= 8, codes
    assert max(t for _, t in outcomes) < deadline_s
    stopped = time.monotonic()
    while run.alive(everything):
        assert time.monotonic() - stopped < 10, run.alive(everything)
        time.sleep(0.2)
    assert stopped - interrupted < 60
