"""Two Triton groups with different models, behind Envoy's egress (one cluster per group):
every call reaches a replica holding its model; one replica killed costs no call; a group's
outage fails its models only; a model moved between groups under load (detect.v1.Operations)
fails only during the gap.

Real processes on both backends: groups of two localtriton replicas, or of one genuine
tritonserver each (it takes seconds to start), in explicit model-control mode."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from detect.v1 import detect_pb2, detect_pb2_grpc, operations_pb2, operations_pb2_grpc
from detect_stack.servers import (
    LOCALTRITON,
    TESTDATA,
    Process,
    null_models,
    proxy,
    triton_client,
    triton_server,
    wait_for,
)
from detect_stack.stack import envoy, make_certs

MODELS = {"a": ("null_a", "null_both"), "b": ("null_b", "null_both")}


@dataclass
class Groups:
    target: str
    replicas: dict[str, list[tuple[str, Process]]]  # group -> (url, process) per replica
    proxy_log: Process
    start_replica: object
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def served_on(self, group: str, model: str) -> int:
        """Inferences of ``model`` the group's replicas ran."""
        total = 0
        for url, _ in self.replicas[group]:
            with grpc.insecure_channel(url) as channel:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                try:
                    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=5)
                except grpc.RpcError:
                    continue  # not loaded there
                total += sum(s.inference_stats.success.count for s in stats.model_stats)
        return total


@pytest.fixture(scope="module")
def groups(tmp_path_factory: pytest.TempPathFactory, backend: str) -> Iterator[Groups]:
    tmp = tmp_path_factory.mktemp(f"groups-{backend}")
    repository = null_models(tmp / "repository", ["null_a", "null_b", "null_both"])
    per_group = 2 if backend == LOCALTRITON else 1

    def start_replica(es: contextlib.ExitStack, group: str, port: int | None = None):
        # Not ready while a model loads or unloads would take the replica out of Envoy's
        # cluster during every move: readiness that does not hang on the models.
        flags = ["--model-control-mode", "explicit", "--strict-readiness", "false"]
        for model in MODELS[group]:
            flags += ["--load-model", model]
        return es.enter_context(triton_server(backend, tmp, *flags, port=port,
                                              repository=repository))

    with contextlib.ExitStack() as es:
        replicas = {g: [start_replica(es, g) for _ in range(per_group)] for g in MODELS}
        specs = {g: ",".join(url for url, _ in replicas[g]) for g in MODELS}
        edge = es.enter_context(envoy(tmp, make_certs(tmp / "certs"), [],
                                      specs["a"].split(","),
                                      triton_groups=[f"{g}={s}" for g, s in specs.items()]))
        target, proc = es.enter_context(proxy(
            tmp, f"127.0.0.1:{edge.egress_port}",
            "--triton-groups", ";".join(f"{g}={s}" for g, s in specs.items()),
            "--exposed-models", "null_a,null_b,null_both", "--default-model", "null_a"))
        yield Groups(target, replicas, proc, start_replica, es)


def _image() -> bytes:
    return (TESTDATA / "camera.png").read_bytes()


def _detect(stub: detect_pb2_grpc.DetectorStub, model: str) -> grpc.StatusCode:
    try:
        stub.Detect(detect_pb2.DetectRequest(image=_image(), model=model), timeout=10)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@dataclass
class Load:
    """Callers of each model, one thread each, until stopped: (time, code) per call."""
    target: str
    models: tuple[str, ...]
    results: dict[str, list[tuple[float, grpc.StatusCode]]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    @contextlib.contextmanager
    def running(self) -> Iterator[Load]:
        threads = [threading.Thread(target=self._call, args=(m,)) for m in self.models]
        for t in threads:
            t.start()
        try:
            yield self
        finally:
            self._stop.set()
            for t in threads:
                t.join(30)

    def _call(self, model: str) -> None:
        out = self.results.setdefault(model, [])
        with grpc.insecure_channel(self.target) as channel:
            stub = detect_pb2_grpc.DetectorStub(channel)
            while not self._stop.is_set() and len(out) < 5000:
                out.append((time.monotonic(), _detect(stub, model)))
                time.sleep(0.01)

    def failures(self, model: str) -> list[tuple[float, grpc.StatusCode]]:
        return [r for r in self.results[model] if r[1] != grpc.StatusCode.OK]


def _operations(target: str) -> tuple[grpc.Channel, operations_pb2_grpc.OperationsStub]:
    channel = grpc.insecure_channel(target)
    return channel, operations_pb2_grpc.OperationsStub(channel)


def test_each_call_reaches_a_replica_of_a_group_holding_its_model(groups):
    with grpc.insecure_channel(groups.target) as channel:
        stub = detect_pb2_grpc.DetectorStub(channel)
        for model in ("null_a", "null_b", "null_both"):
            assert [_detect(stub, model) for _ in range(20)] == [grpc.StatusCode.OK] * 20
        missing = _detect(stub, "null_c")
    assert missing == grpc.StatusCode.NOT_FOUND
    assert groups.served_on("a", "null_a") == 20 and groups.served_on("b", "null_b") == 20
    # The model both groups serve is spread over both.
    assert groups.served_on("a", "null_both") > 0 and groups.served_on("b", "null_both") > 0
    if len(groups.replicas["a"]) > 1:  # and within a group, over its replicas (Envoy)
        for url, _ in groups.replicas["a"]:
            with grpc.insecure_channel(url) as channel:
                stats = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
                    pb.ModelStatisticsRequest(name="null_a"), timeout=5)
            assert stats.model_stats[0].inference_stats.success.count > 0

    channel, ops = _operations(groups.target)
    with channel:
        listing = ops.ListGroups(operations_pb2.ListGroupsRequest(), timeout=10)
    by_name = {g.name: g for g in listing.groups}
    assert sorted(by_name) == ["a", "b"]
    assert list(by_name["a"].models) == ["null_a", "null_both"]
    assert list(by_name["b"].models) == ["null_b", "null_both"]
    for group in listing.groups:
        assert group.up and all(r.reachable for r in group.replicas)
        states = {(m.name, m.state) for m in group.replicas[0].models}
        assert ("null_c", "") not in states  # not in the repository at all
        assert all(("READY" if n in MODELS[group.name] else "") == s for n, s in states)
    # The operator's command shows the same table.
    shown = subprocess.run([sys.executable, "-m", "detect_client.cli", "ops", "groups",
                            "--plaintext", "--target", groups.target],
                           capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("a (up, ") and "serves null_a, null_both" in shown.stdout
    assert "null_b/1 READY" in shown.stdout and "null_c" not in shown.stdout


def test_a_group_down_fails_only_its_models_and_is_used_again_when_back(groups):
    load = Load(groups.target, ("null_a", "null_b", "null_both"))
    with load.running():
        time.sleep(1.0)
        killed = [(url, proc) for url, proc in groups.replicas["b"]]
        for _, proc in killed:
            proc.stop(signal.SIGKILL)
        killed_at = time.monotonic()
        time.sleep(2.5)
        ports = [int(url.rsplit(":", 1)[1]) for url, _ in killed]
        groups.replicas["b"] = [groups.start_replica(groups.stack, "b", port) for port in ports]
        back_at = time.monotonic()
        wait_for(lambda: load.results["null_b"][-1][1] == grpc.StatusCode.OK, 5.0,
                 "calls for group b's model succeed again")
        recovered_in = time.monotonic() - back_at
        time.sleep(0.5)
    assert load.failures("null_a") == [] and load.failures("null_both") == []
    failed_b = load.failures("null_b")
    assert failed_b, "group b's model cannot have been served while b was down"
    assert {code for _, code in failed_b} == {grpc.StatusCode.UNAVAILABLE}
    assert all(killed_at - 0.1 <= t <= back_at + recovered_in for t, _ in failed_b)
    assert recovered_in < 5.0


def test_one_replica_of_a_group_killed_costs_no_call(groups, backend):
    """Envoy's cluster per group retries a call whose replica died on the group's other
    replica, and outlier detection takes the dead one out: no caller sees it."""
    if backend != LOCALTRITON:
        pytest.skip("tritonserver groups have one replica each here (it takes seconds to start)")
    load = Load(groups.target, ("null_a", "null_b", "null_both"))
    with load.running():
        time.sleep(1.0)
        url, proc = groups.replicas["a"][0]
        proc.stop(signal.SIGKILL)
        time.sleep(2.0)
        groups.replicas["a"][0] = groups.start_replica(groups.stack, "a",
                                                       int(url.rsplit(":", 1)[1]))
        time.sleep(1.0)
    for model in ("null_a", "null_b", "null_both"):
        assert load.failures(model) == [], model
        assert len(load.results[model]) > 50


def test_a_model_moved_between_groups_under_load_fails_only_in_the_gap(groups):
    before_b = groups.served_on("b", "null_a")
    load = Load(groups.target, ("null_a", "null_b", "null_both"))
    channel, ops = _operations(groups.target)
    with channel, load.running():
        time.sleep(1.0)
        gap_from = time.monotonic()
        unloaded = ops.UnloadModel(operations_pb2.ModelControlRequest(model="null_a", group="a"),
                                   timeout=60)
        loaded = ops.LoadModel(operations_pb2.ModelControlRequest(model="null_a", group="b"),
                               timeout=60)
        gap_to = time.monotonic()
        time.sleep(1.5)
        listing = ops.ListGroups(operations_pb2.ListGroupsRequest(), timeout=10)
        # Operator mistakes get a clear status.
        with pytest.raises(grpc.RpcError) as unknown_group:
            ops.LoadModel(operations_pb2.ModelControlRequest(model="null_a", group="c"),
                          timeout=10)
        with pytest.raises(grpc.RpcError) as unknown_model:
            ops.LoadModel(operations_pb2.ModelControlRequest(model="nope", group="a"),
                          timeout=30)
    assert list(unloaded.served_by) == [] and list(loaded.served_by) == ["b"]
    assert len(loaded.replicas) == len(groups.replicas["b"])
    assert {g.name: list(g.models) for g in listing.groups} == {
        "a": ["null_both"], "b": ["null_a", "null_b", "null_both"]}
    for model in ("null_b", "null_both"):
        failures = load.failures(model)
        assert failures == [], (model, gap_from, gap_to, failures[:3], failures[-3:],
                                groups.proxy_log.log()[-3000:])
    failed = load.failures("null_a")
    assert {code for _, code in failed} <= {grpc.StatusCode.UNAVAILABLE}
    assert all(gap_from <= t <= gap_to for t, _ in failed)
    after = [code for t, code in load.results["null_a"] if t > gap_to]
    assert after and set(after) == {grpc.StatusCode.OK}
    assert groups.served_on("b", "null_a") > before_b
    assert unknown_group.value.code() == grpc.StatusCode.NOT_FOUND
    assert "groups: a, b" in unknown_group.value.details()
    assert unknown_model.value.code() == grpc.StatusCode.NOT_FOUND


def test_groups_reached_directly_without_envoy(tmp_path):
    """--groups-via-egress false: the proxy balances over each group's replicas itself,
    over TLS (--triton-tls-ca) as it would between hosts."""
    only_a = null_models(tmp_path / "a", ["null_a"])
    only_b = null_models(tmp_path / "b", ["null_b"])
    certs = make_certs(tmp_path / "certs")
    with contextlib.ExitStack() as es:
        a = [es.enter_context(triton_server(LOCALTRITON, tmp_path, repository=only_a,
                                            tls=certs))]
        b = [es.enter_context(triton_server(LOCALTRITON, tmp_path, repository=only_b,
                                            tls=certs)) for _ in range(2)]
        spec = ";".join(f"{g}={','.join(url for url, _ in r)}" for g, r in (("a", a), ("b", b)))
        target, _ = es.enter_context(proxy(
            tmp_path, "127.0.0.1:1", "--triton-groups", spec, "--groups-via-egress", "false",
            "--triton-tls-ca", str(certs / "ca.crt"), "--triton-tls-server-name", "localhost",
            "--exposed-models", "null_a,null_b", "--default-model", "null_a"))
        with grpc.insecure_channel(target) as channel:
            stub = detect_pb2_grpc.DetectorStub(channel)
            codes = [_detect(stub, m) for m in ("null_a", "null_b") for _ in range(10)]
        assert codes == [grpc.StatusCode.OK] * 20
        counts = []
        for url, _ in b:  # round robin over group b's two replicas
            with triton_client(url, certs) as client:
                stats = client.get_inference_statistics("null_b", as_json=True)
            counts.append(int(stats["model_stats"][0]["inference_stats"]["success"]["count"]))
        assert sum(counts) == 10 and min(counts) > 0
