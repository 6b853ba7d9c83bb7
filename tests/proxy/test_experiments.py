"""Model versions, experiments, shadow traffic and the guard, through a real proxy in front of
a real server holding five versions of a light detector (1 and 2 answer alike, 3 disagrees,
4 fails every call, 5 takes 0.3 s)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as grpcclient

from detect.v1 import detect_pb2, detect_pb2_grpc, operations_pb2, operations_pb2_grpc
from detect_proxy import contract
from detect_proxy.experiments import bucket
from detect_stack.promtext import scrape, value
from detect_stack.servers import (
    TESTDATA,
    free_port,
    proxy,
    redis_server,
    triton_server,
    versioned_models,
    wait_for,
)

MODEL = "versioned_detector"
SALT = "test-salt"


def _experiment(weights: tuple[float, float], candidate: str = "2", shadow: str = "",
                guard: str = "", control: str = "1") -> str:
    text = (f'[{MODEL}]\nsalt = "{SALT}"\nforce_clients = ["qa"]\n'
            f'[[{MODEL}.variants]]\nname = "control"\nversion = "{control}"\n'
            f"weight = {weights[0]}\n"
            f'[[{MODEL}.variants]]\nname = "candidate"\nversion = "{candidate}"\n'
            f"weight = {weights[1]}\n")
    if shadow:
        text += f'[{MODEL}.shadow]\nversion = "{shadow}"\nfraction = 1.0\nmax_concurrency = 8\n'
    if guard:
        text += f"[{MODEL}.guard]\n{guard}\n"
    return text


@contextlib.contextmanager
def _stack(tmp_path: Path, backend: str, experiments: str, *flags: str,
           port: int | None = None):
    """(stub, experiments file, backend url, metrics port, proxy target, proxy, backend)"""
    repository = versioned_models(tmp_path / "repository")
    path = tmp_path / "experiments.toml"
    path.write_text(experiments)
    metrics_port = free_port()
    with triton_server(backend, tmp_path, repository=repository, port=port) as (url, server), \
            proxy(tmp_path, url, "--exposed-models", MODEL, "--default-model", MODEL,
                  "--experiments", str(path), "--experiments-refresh-ms", "100", *flags,
                  metrics_port=metrics_port) as (target, process), \
            grpc.insecure_channel(target) as channel:
        yield (detect_pb2_grpc.DetectorStub(channel), path, url, metrics_port, target, process,
               server)


def _detect(stub, image: bytes, key: str = "", **headers: str) -> detect_pb2.DetectResponse:
    metadata = [(contract.ROUTING_KEY_HEADER, key)] if key else []
    metadata += list(headers.items())
    return stub.Detect(detect_pb2.DetectRequest(image=image), metadata=metadata, timeout=10)


def _versions(stub, image: bytes, keys: list[str]) -> dict[str, str]:
    with ThreadPoolExecutor(8) as pool:
        answers = pool.map(lambda key: _detect(stub, image, key), keys)
        return {key: a.model_version for key, a in zip(keys, answers, strict=True)}


def _reload(stub, image: bytes, path: Path, text: str, probe: str, expect: str) -> None:
    """Write the experiments file and wait until a probing call shows it in force."""
    path.write_text(text)
    deadline = time.monotonic() + 10
    while _detect(stub, image, probe).model_version != expect:
        assert time.monotonic() < deadline, "the experiments file was not re-read"
        time.sleep(0.05)


def _answers(stub, image: bytes) -> bool:
    try:
        _detect(stub, image)
        return True
    except grpc.RpcError:
        return False


def _metric(port: int, name: str, **labels: str) -> float:
    return value(scrape(port), name, **labels)


def test_pinned_versions_and_what_the_response_says(tmp_path, backend, images):
    with _stack(tmp_path, backend, _experiment((1, 0))) as (stub, _, _, _, target, *_):
        image = images["coffee.png"]
        for version in ("1", "2", "3"):
            answer = stub.Detect(detect_pb2.DetectRequest(image=image, model_version=version),
                                 timeout=10)
            assert (answer.model_version, answer.variant) == (version, "")
        assert answer.detections[0].box.x_min == 100.0  # version 3 answers its own way
        unpinned = _detect(stub, image, "someone")
        assert (unpinned.model_version, unpinned.variant) == ("1", "control")
        batch = stub.DetectBatch(detect_pb2.DetectBatchRequest(
            images=[image, image], model_version="2"), timeout=10,
            metadata=[(contract.DECLARED_IMAGES_HEADER, "2")])
        assert [r.response.model_version for r in batch.results] == ["2", "2"]
        with pytest.raises(grpc.RpcError) as missing:
            stub.Detect(detect_pb2.DetectRequest(image=image, model_version="7"), timeout=10)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert missing.value.details() == (f"model '{MODEL}' has no version 7 ready; ready "
                                           "versions: 1, 2, 3, 4, 5")
        with pytest.raises(grpc.RpcError) as bad:
            stub.Detect(detect_pb2.DetectRequest(image=image, model_version="v2"), timeout=10)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "model_version must be digits" in bad.value.details()
        shown = subprocess.run([sys.executable, "-m", "detect_client.cli", "--plaintext",
                                "--target", target, str(TESTDATA / "coffee.png")],
                               capture_output=True, text=True, check=True, timeout=30).stdout
        assert f"model {MODEL} v1 (control)" in shown
        pinned = subprocess.run([sys.executable, "-m", "detect_client.cli", "batch",
                                 "--plaintext", "--target", target, "--model-version", "3",
                                 "--json", str(TESTDATA / "coffee.png")],
                                capture_output=True, text=True, check=True, timeout=30).stdout
        assert '"model_version": "3"' in pinned


def test_sticky_split_reload_and_forced_variant(tmp_path, images):
    image = images["coffee.png"]
    keys = [f"caller-{i}" for i in range(2000)]
    with _stack(tmp_path, "localtriton", _experiment((90, 10))) as (stub, path, *_):
        first = _versions(stub, image, keys)
        share = Counter(first.values())["2"] / len(keys)
        assert 0.07 <= share <= 0.13, share
        # The assignment is the documented hash: any process computes the same.
        assert all((bucket(SALT, k) >= 0.9) == (v == "2") for k, v in first.items())
        assert _versions(stub, image, keys[:300]) == {k: first[k] for k in keys[:300]}

        # 90/10 -> 80/20: only the keys in [0.8, 0.9) move, all from control to candidate.
        probe = next(k for k in keys if 0.8 <= bucket(SALT, k) < 0.9)
        _reload(stub, image, path, _experiment((80, 20)), probe, "2")
        second = _versions(stub, image, keys)
        moved = [k for k in keys if first[k] != second[k]]
        assert all(first[k] == "1" and second[k] == "2" for k in moved)
        assert 0.07 <= len(moved) / len(keys) <= 0.13, len(moved)

        # A client allowed to force a variant gets it; anyone else is refused, clearly.
        forced = _detect(stub, image, probe, **{contract.CLIENT_ID_HEADER: "qa",
                                                 contract.VARIANT_HEADER: "control"})
        assert (forced.model_version, forced.variant) == ("1", "control")
        with pytest.raises(grpc.RpcError) as denied:
            _detect(stub, image, probe, **{contract.CLIENT_ID_HEADER: "mallory",
                                           contract.VARIANT_HEADER: "control"})
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as unknown:
            _detect(stub, image, probe, **{contract.CLIENT_ID_HEADER: "qa",
                                           contract.VARIANT_HEADER: "nope"})
        assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "variants: control, candidate" in unknown.value.details()

        # A broken file is refused and the experiment in force stays.
        path.write_text("[versioned_detector]\nsalt = 1\n")
        time.sleep(0.5)
        assert _detect(stub, image, probe).model_version == "2"


def _inference_counts(url: str) -> dict[str, int]:
    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(MODEL).model_stats
        return {s.version: s.inference_count for s in stats}


def _wait_for_shadow(target: str, version: str) -> None:
    """Until the proxy's experiment in force shadows ``version`` (the file was re-read)."""
    with grpc.insecure_channel(target) as channel:
        stub = operations_pb2_grpc.OperationsStub(channel)
        deadline = time.monotonic() + 10
        while [e.shadow_version for e in stub.ListExperiments(
                operations_pb2.ListExperimentsRequest(), timeout=5).experiments] != [version]:
            assert time.monotonic() < deadline, "the experiments file was not re-read"
            time.sleep(0.05)


def _shadowed(metrics: int, calls: int, **labels: str) -> float:
    """Waits until each of ``calls`` shadowed calls has an outcome; how many were compared."""
    deadline = time.monotonic() + 15
    while _metric(metrics, "detect_shadow_calls_total", **labels) < calls:
        assert time.monotonic() < deadline, [(s[1], s[2]) for s in scrape(metrics)
                                             if s[0] == "detect_shadow_calls_total"]
        time.sleep(0.05)
    return _metric(metrics, "detect_shadow_calls_total", outcome="OK", **labels)


def test_shadow_agreement_and_backend_work(tmp_path, backend, images):
    image = images["coffee.png"]
    with _stack(tmp_path, backend, _experiment((1, 0), shadow="2")) as (stub, path, url,
                                                                         metrics, target, *_):
        for i in range(40):
            assert _detect(stub, image, f"k{i}").model_version == "1"
        compared = _shadowed(metrics, 40, version="2")
        assert compared >= 30  # the rest skipped at the shadow's concurrency limit
        counts = _inference_counts(url)
        assert counts["1"] == 40 and counts["2"] == compared  # shadowed calls ran twice
        identical = {"version": "2", "primary_version": "1"}
        assert _metric(metrics, "detect_shadow_matched_sum", **identical) == compared
        assert _metric(metrics, "detect_shadow_matched_count", **identical) == compared

        path.write_text(_experiment((1, 0), shadow="3"))
        _wait_for_shadow(target, "3")
        for i in range(20):
            _detect(stub, image, f"k{i}")
        compared = _shadowed(metrics, 20, version="3")
        differing = {"version": "3", "primary_version": "1"}
        assert _metric(metrics, "detect_shadow_matched_count", **differing) == compared > 0
        assert _metric(metrics, "detect_shadow_matched_sum", **differing) == 0  # below 1.0

        # A slow candidate costs the callers nothing: their answers do not wait for it.
        path.write_text(_experiment((1, 0), shadow="5"))
        _wait_for_shadow(target, "5")
        for i in range(10):
            start = time.monotonic()
            _detect(stub, image, f"k{i}")
            assert time.monotonic() - start < 0.2
        assert _shadowed(metrics, 10, version="5") >= 1


def _ops(target: str, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "detect_client.cli", "ops", *args,
                           "--plaintext", "--target", target],
                          capture_output=True, text=True, check=True, timeout=30).stdout


def _bad_calls_before_the_guard(min_calls: int) -> int:
    """How many of the calls ``caller-0``, ``caller-1``, ... (one at a time, 50/50) reach a bad
    candidate: until one of them finds its window holding min_calls and control keeping
    within the bounds on the calls it served since the candidate's first bad call (min_calls
    or more); none after."""
    candidate, control_since = 0, 0
    for point in (bucket(SALT, f"caller-{i}") for i in range(200)):
        if point < 0.5:
            control_since += candidate > 0
            continue
        candidate += 1
        if candidate >= min_calls and control_since >= min_calls:
            break
    return candidate


def test_guard_takes_a_slow_candidate_out(tmp_path, images):
    image = images["coffee.png"]
    guard = "window_s = 30\nmin_calls = 5\nmax_error_rate = 0.2\nmax_p99_ms = 250"
    with _stack(tmp_path, "localtriton", _experiment((50, 50), candidate="5", guard=guard)) \
            as (stub, _, _, metrics, _, process, _):
        slow = 0
        for i in range(60):
            start = time.monotonic()
            _detect(stub, image, f"caller-{i}")
            slow += time.monotonic() - start > 0.25  # version 5 takes 0.3 s
        assert slow == _bad_calls_before_the_guard(5)
        assert _metric(metrics, "detect_experiment_guarded", variant="candidate") == 1
        assert "taken out of the split: p99 latency 3" in process.log()


def test_guard_takes_a_failing_candidate_out_until_an_operator_puts_it_back(tmp_path, images):
    image = images["coffee.png"]
    guard = "window_s = 30\nmin_calls = 5\nmax_error_rate = 0.2"
    with _stack(tmp_path, "localtriton", _experiment((50, 50), candidate="4", guard=guard)) \
            as (stub, _, _, metrics, target, process, _):
        failures = Counter()
        for i in range(200):
            try:
                assert _detect(stub, image, f"caller-{i}").variant == "control"
            except grpc.RpcError as err:
                failures[err.code()] += 1
        assert failures == Counter({grpc.StatusCode.INTERNAL: _bad_calls_before_the_guard(5)})
        assert _metric(metrics, "detect_experiment_guarded", variant="candidate") == 1
        assert _metric(metrics, "detect_experiment_weight", variant="candidate") == 0
        assert "taken out of the split: error rate 100.0%" in process.log()
        assert "candidate: version 4, weight 50, GUARDED: error rate" in _ops(target,
                                                                              "experiments")

        assert "back in the split" in _ops(target, "restore", MODEL, "candidate")
        assert _metric(metrics, "detect_experiment_guarded", variant="candidate") == 0
        key = next(f"caller-{i}" for i in range(200) if bucket(SALT, f"caller-{i}") >= 0.5)
        with pytest.raises(grpc.RpcError) as again:
            _detect(stub, image, key)
        assert again.value.code() == grpc.StatusCode.INTERNAL


def test_a_backend_outage_takes_no_variant_out(tmp_path, images):
    """Every variant fails alike while the backend is down: a fault they share, not a
    variant's, so the split is the same when the backend is back."""
    image = images["coffee.png"]
    guard = "window_s = 2\nmin_calls = 5\nmax_error_rate = 0.2"
    port = free_port()
    keys = [f"caller-{i}" for i in range(40)]
    with _stack(tmp_path, "localtriton", _experiment((50, 50), guard=guard), port=port) \
            as (stub, _, _, metrics, target, process, backend):
        before = _versions(stub, image, keys)
        assert set(before.values()) == {"1", "2"}
        backend.stop(signal.SIGKILL)
        failures = Counter()
        for key in keys:
            try:
                _detect(stub, image, key)
            except grpc.RpcError as err:
                failures[err.code()] += 1
        assert failures == Counter({grpc.StatusCode.UNAVAILABLE: len(keys)})
        assert _metric(metrics, "detect_experiment_shared_breach", model=MODEL) == 1
        assert "every variant breaks its guard at once" in process.log()
        assert "a shared fault" in _ops(target, "experiments")
        with triton_server("localtriton", tmp_path, repository=tmp_path / "repository",
                           port=port):
            wait_for(lambda: _answers(stub, image), 10, "recovery")
            # Once the failures leave the window the guard judges afresh; nobody was out.
            wait_for(lambda: _versions(stub, image, keys) == before
                     and _metric(metrics, "detect_experiment_shared_breach", model=MODEL) == 0,
                     10, "the guard judging afresh")
        assert _metric(metrics, "detect_experiment_guarded", variant="candidate") == 0
        assert _metric(metrics, "detect_experiment_guarded", variant="control") == 0
        assert "the guard judges afresh" in process.log()


def test_overload_refusals_are_no_variants_fault(tmp_path, images):
    """Above capacity the proxy refuses the excess early (RESOURCE_EXHAUSTED); those calls
    never reached a variant, so a guard with a 5% error bound takes nobody out."""
    image = images["coffee.png"]
    guard = "window_s = 30\nmin_calls = 5\nmax_error_rate = 0.05\nmax_p99_ms = 1000"
    # Both variants on the 0.3 s version, two upstream slots: about 7 calls/s.
    with _stack(tmp_path, "localtriton", _experiment((50, 50), candidate="5", control="5",
                                                     guard=guard),
                "--max-upstream-calls", "2") as (stub, _, _, metrics, *_):
        def caller(n: int) -> Counter:
            codes: Counter = Counter()
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                key = f"c{n}-{sum(codes.values())}"
                try:
                    stub.Detect(detect_pb2.DetectRequest(image=image), timeout=1,
                                metadata=[(contract.ROUTING_KEY_HEADER, key)])
                    codes[grpc.StatusCode.OK] += 1
                except grpc.RpcError as err:
                    codes[err.code()] += 1
            return codes

        for i in range(4):  # admission learns the backend's pace
            _detect(stub, image, f"warm-{i}")
        with ThreadPoolExecutor(16) as pool:
            codes = sum(pool.map(caller, range(16)), Counter())
        # The excess refused at once; a call the estimate let wait too long may time out in
        # the proxy's queue (also before any variant saw it).
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED,
                              grpc.StatusCode.DEADLINE_EXCEEDED}, codes
        assert codes[grpc.StatusCode.RESOURCE_EXHAUSTED] > codes[grpc.StatusCode.OK] >= 6
        assert _metric(metrics, "detect_experiment_guarded", variant="control") == 0
        assert _metric(metrics, "detect_experiment_guarded", variant="candidate") == 0


def test_a_guard_decision_reaches_every_proxy_through_redis(tmp_path, images):
    """Two proxies on one Redis: the one whose guard takes the failing candidate out tells
    the other, whose callers then never meet it; one restore, through either, reaches both."""
    image = images["coffee.png"]
    repository = versioned_models(tmp_path / "repository")
    path = tmp_path / "experiments.toml"
    path.write_text(_experiment((50, 50), candidate="4",
                                guard="window_s = 30\nmin_calls = 5\nmax_error_rate = 0.2"))
    flags = ("--exposed-models", MODEL, "--default-model", MODEL, "--experiments", str(path),
             "--cache-ttl-s", "0")
    metrics = (free_port(), free_port())
    with redis_server(tmp_path) as (redis_url, redis), \
            triton_server("localtriton", tmp_path, repository=repository) as (url, _), \
            proxy(tmp_path, url, *flags, "--redis-url", redis_url,
                  metrics_port=metrics[0]) as (first, first_log), \
            proxy(tmp_path, url, *flags, "--redis-url", redis_url,
                  metrics_port=metrics[1]) as (second, second_log), \
            grpc.insecure_channel(first) as first_channel, \
            grpc.insecure_channel(second) as second_channel:
        for log in (first_log, second_log):
            wait_for(lambda log=log: "guard decisions shared through" in log.log(), 10,
                     "subscribed to the guard's messages")
        stub, other = (detect_pb2_grpc.DetectorStub(c) for c in (first_channel, second_channel))
        failures = Counter()
        for i in range(100):
            try:
                _detect(stub, image, f"caller-{i}")
            except grpc.RpcError as err:
                failures[err.code()] += 1
        assert failures == Counter({grpc.StatusCode.INTERNAL: _bad_calls_before_the_guard(5)})
        wait_for(lambda: "GUARDED" in _ops(second, "experiments"), 5, "the other proxy follows")
        assert all(_detect(other, image, f"caller-{i}").variant == "control" for i in range(100))
        assert "taken out of the split by another proxy's guard: error rate" in second_log.log()

        assert "back in the split" in _ops(second, "restore", MODEL, "candidate")
        wait_for(lambda: "GUARDED" not in _ops(first, "experiments"), 5, "restored on both")
        key = next(f"caller-{i}" for i in range(100) if bucket(SALT, f"caller-{i}") >= 0.5)
        with pytest.raises(grpc.RpcError) as again:
            _detect(stub, image, key)
        assert again.value.code() == grpc.StatusCode.INTERNAL
        assert "put back into the split by an operator (through another proxy)" in \
            first_log.log()
        messages = "detect_experiment_guard_messages_total"
        assert _metric(metrics[0], messages, outcome="sent", action="out") == 1
        assert _metric(metrics[1], messages, outcome="applied", action="out") == 1
        assert _metric(metrics[1], messages, outcome="sent", action="back") == 1
        assert _metric(metrics[0], messages, outcome="applied", action="back") == 1

        # Redis is an optimisation: without it a restore still works, on its own proxy.
        redis.stop(signal.SIGKILL)
        assert "back in the split" in _ops(first, "restore", MODEL, "candidate")
        wait_for(lambda: "the other proxies were not told that variant candidate was put back" in
                     first_log.log(), 5,
                 "the dropped message logged")
        assert _metric(metrics[0], messages, outcome="dropped", action="back") == 1
