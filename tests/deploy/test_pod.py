"""A proxy pod, as deploy/k8s/proxy.yaml describes it, run on loopback, with its Triton groups.

Envoy with the pod's rendered settings and the container's own command line, the proxy
with the container's arguments and Triton groups, and one server per group of
deploy/k8s/triton.yaml: the genuine tritonserver with the group's command line (explicit
model control, its models), or localtriton with Triton's keepalive flags where `make
triton` has not installed tritonserver. Each group is found by name, through STRICT_DNS
like its headless Service. Only ports (free ones), the front address (loopback) and the
certificate directory differ. Then routing by group, the probes, the ops listener and the
preStop drain are exercised for real.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from detect.v1 import detect_pb2, detect_pb2_grpc, operations_pb2, operations_pb2_grpc
from detect_deploy import configs
from detect_deploy.manifests import (
    DEPLOY,
    argv,
    configmap_file,
    container,
    env_of,
    find,
    flag,
    loaded_models,
    local_triton_flags,
    models_loaded,
    service_target,
)
from detect_envoy import render
from detect_localtriton import tritonserver as launcher
from detect_proxy.group_spec import parse_groups
from detect_stack.servers import (
    LOCALTRITON,
    TESTDATA,
    TRITON,
    free_port,
    proxy,
    running,
    triton_server,
    wait_for,
)

ENVOY = str(Path(sys.executable).parent / "envoy")
PODCTL = [sys.executable, str(DEPLOY / "podctl.py")]
DRAIN_TIME_S = 2.0  # the manifest's --drain-time-s, shortened to keep the test quick


def replaced(args: list[str], values: dict[str, str]) -> list[str]:
    out = list(args)
    for name, value in values.items():
        out[out.index(name) + 1] = value
    return out


def stat(admin: int, name: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?filter=^{name}$", timeout=5) as r:
        line = r.read().decode().strip()
    return int(line.rsplit(":", 1)[1]) if line else 0


def ops_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def tritonserver_installed() -> bool:
    try:
        launcher.site_packages(Path(os.environ.get(launcher.VENV_ENV, ".venv-triton")))
    except launcher.SetupError:
        return False
    return True


def health(target: str, service: str = "detect.v1.Detector") -> int:
    with grpc.insecure_channel(target) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=3).status


@pytest.fixture(scope="module")
def pod(tmp_path_factory, dev_tls):
    tmp = tmp_path_factory.mktemp("pod")
    # The pod's TLS volume: the Secret's files and the ConfigMap's SDS file, in one directory.
    tls = tmp / "tls"
    tls.mkdir()
    for name in ("tls.crt", "tls.key"):
        (tls / name).write_bytes((dev_tls / name).read_bytes())
    sds = (DEPLOY / "k8s" / "envoy" / configs.SDS_FILE).read_text()
    (tls / configs.SDS_FILE).write_text(sds.replace(str(configs.TLS_DIR), str(tls)))
    deployment = find("Deployment", "detect-proxy")
    groups = parse_groups(env_of(container(deployment, "proxy"))["DETECT_PROXY_TRITON_GROUPS"])
    backend = TRITON if tritonserver_installed() else LOCALTRITON
    ports = {name: free_port() for name in ("front", "ops", "admin", "egress", "proxy", "metrics")}
    with contextlib.ExitStack() as stack:
        # Each group's headless Service (host:port) -> its one replica here, by name.
        local: dict[str, str] = {}
        models: dict[str, list[str]] = {}
        for group in groups:
            [service] = group.replicas
            args = argv(container(service_target(find("Service", service.rsplit(":", 1)[0])),
                                  "triton"))
            flags = local_triton_flags(args) if backend == TRITON else [
                a for a in local_triton_flags(args)
                if a.startswith(("--grpc-keepalive", "--grpc-http2"))]
            url, _ = stack.enter_context(triton_server(backend, tmp, *flags))
            local[service] = f"localhost:{url.rsplit(':', 1)[1]}"
            models[group.name] = loaded_models(args)
        here = {group.name: local[group.replicas[0]] for group in groups}
        proxy_args = replaced(argv(container(deployment, "proxy"))[1:], {
            "--listen": f"127.0.0.1:{ports['proxy']}",
            "--triton-url": f"127.0.0.1:{ports['egress']}",
            "--metrics-port": str(ports["metrics"])})
        listen = proxy_args.pop(proxy_args.index("--listen") + 1)
        proxy_args.remove("--listen")
        metrics = proxy_args.pop(proxy_args.index("--metrics-port") + 1)
        proxy_args.remove("--metrics-port")
        # The container's DETECT_PROXY_TRITON_GROUPS, its Services here; what the manifest
        # exposes (its default: the ensembles only).
        proxy_args += ["--triton-groups", ";".join(f"{g}={a}" for g, a in here.items()),
                       "--exposed-models="]
        # The experiments volume, laid out as the kubelet writes a ConfigMap volume.
        mounted = env_of(container(deployment, "proxy"))["DETECT_PROXY_EXPERIMENTS"]
        experiments = configmap_file(deployment, "proxy", mounted)
        configmap_volume(tmp / "experiments", {experiments.name: experiments.read_text()})
        proxy_args += ["--experiments", str(tmp / "experiments" / experiments.name)]
        target = f"127.0.0.1:{ports['proxy']}"
        assert target == listen
        config = configs.k8s_envoy(
            proxies=[target], tritons=[here[configs.DEFAULT_GROUP]],
            triton_groups=[f"{g}={a}" for g, a in here.items()],
            cert_dir=tls, front_address="127.0.0.1", front_port=ports["front"],
            ops_port=ports["ops"], admin_port=ports["admin"], egress_port=ports["egress"],
            proxy_metrics=f"127.0.0.1:{ports['metrics']}",
            access_log=str(tmp / "access.log"))
        path = tmp / "envoy.yaml"
        path.write_text(render.to_yaml(render.render(config)))
        envoy_args = replaced(argv(container(deployment, "envoy")), {
            "-c": str(path), "--drain-time-s": f"{DRAIN_TIME_S:g}"})
        ops = f"127.0.0.1:{ports['ops']}"

        def envoy_live() -> bool:  # listeners up, clusters initialised
            return ops_get(ports["admin"], "/ready")[0] == 200

        def ready() -> bool:
            """The readiness probe (gRPC health through the ops port), and Envoy's health
            checks of the proxy and of every group have passed (Envoy checks every 1 s; the
            probe alone can pass just before, as in a pod)."""
            clusters = ["detect_proxy", "triton", *(f"triton_{g}" for g in here)]
            try:
                serving = health(ops) == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                return False
            return serving and all(
                stat(ports["admin"], f"cluster.{c}.membership_healthy") == 1 for c in clusters)

        # The kubelet starts the containers in their order: Envoy, then the proxy. (With
        # groups the proxy turns SERVING on its own polls of the replicas, not through the
        # egress: a proxy started before its Envoy listens may be ready while its pooled
        # connections to the egress are still backing off.)
        stack.enter_context(running([ENVOY, *envoy_args], tmp / "envoy.log", envoy_live))
        stack.enter_context(proxy(tmp, f"127.0.0.1:{ports['egress']}", *proxy_args,
                                  port=ports["proxy"], metrics_port=int(metrics),
                                  wait_serving=False))
        wait_for(ready, 60, "the pod's readiness probe")
        yield {**ports, "target": target, "ops_target": ops, "deployment": deployment,
               "backend": backend, "models": models, "experiments": tmp / "experiments",
               "shipped_experiments": experiments}


def configmap_volume(directory: Path, files: dict[str, str]) -> None:
    """Write ``files`` as the kubelet updates a ConfigMap volume: into a new hidden
    directory, then the ``..data`` link swapped to it in one rename (each file is a link
    through ``..data``), so a reader sees the old files or the new ones, never a mix."""
    directory.mkdir(exist_ok=True)
    data = directory / "..data"
    old = data.resolve() if data.exists() else None
    new = directory / f"..{time.time_ns()}"
    new.mkdir()
    for name, text in files.items():
        (new / name).write_text(text)
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(f"..data/{name}")
    (directory / "..data_tmp").symlink_to(new.name)
    os.replace(directory / "..data_tmp", data)
    if old is not None:
        shutil.rmtree(old)


def detect(channel: grpc.Channel) -> int:
    image = (TESTDATA / "astronaut.png").read_bytes()
    stub = detect_pb2_grpc.DetectorStub(channel)
    reply = stub.Detect(detect_pb2.DetectRequest(image=image), timeout=10)
    return len(reply.detections)


def tls_channel(pod, dev_tls) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials((dev_tls / "ca.crt").read_bytes())
    return grpc.secure_channel(f"127.0.0.1:{pod['front']}", creds,
                               options=[("grpc.ssl_target_name_override", "localhost")])


def test_calls_go_through_tls_to_triton_found_by_name(pod, dev_tls):
    with tls_channel(pod, dev_tls) as channel:
        assert detect(channel) == 1
    with urllib.request.urlopen(f"http://127.0.0.1:{pod['admin']}/clusters?format=json",
                                timeout=5) as r:
        clusters = {c["name"]: c for c in json.loads(r.read())["cluster_statuses"]}
    for name in ["triton", *(f"triton_{g}" for g in pod["models"])]:
        [host] = clusters[name]["host_statuses"]
        assert host["hostname"] == "localhost"  # STRICT_DNS, as with the headless Service


def samples(text: str, metric: str) -> dict[frozenset[tuple[str, str]], float]:
    """Prometheus text: labels -> value of every sample of ``metric``."""
    out = {}
    for m in re.finditer(rf"^{metric}{{([^}}]*)}} (\S+)$", text, re.MULTILINE):
        labels = frozenset((k, v) for k, v in re.findall(r'(\w+)="([^"]*)"', m.group(1))
                           if not k.startswith("otel_scope_"))
        out[labels] = float(m.group(2))
    return out


def test_the_proxy_routes_each_call_to_a_group_serving_its_model(pod, dev_tls):
    """Every group is up and serves the models its command line loads (with localtriton,
    which loads everything, at least those); calls through the front reach the groups
    through their clusters; the benchmark model stays unexposed though a group serves it."""
    with tls_channel(pod, dev_tls) as channel:
        for _ in range(6):
            assert detect(channel) == 1
        listed = detect_pb2_grpc.DetectorStub(channel).ListModels(
            detect_pb2.ListModelsRequest(), timeout=10)
        assert [m.name for m in listed.models] == ["face_detector"]
        with pytest.raises(grpc.RpcError) as err:
            detect_pb2_grpc.DetectorStub(channel).Detect(detect_pb2.DetectRequest(
                image=(TESTDATA / "astronaut.png").read_bytes(), model="null_detector"),
                timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    status, text = ops_get(pod["ops"], "/metrics")
    assert status == 200
    up = samples(text, "detect_group_replicas")
    serves = samples(text, "detect_group_serves")
    for group, models in pod["models"].items():
        assert up[frozenset({("group", group), ("state", "up")})] == 1
        assert up[frozenset({("group", group), ("state", "down")})] == 0
        served = {dict(k)["model"] for k in serves if dict(k)["group"] == group}
        if pod["backend"] == TRITON:
            assert served == models_loaded(models)  # exactly its --load-model set
        else:
            assert served >= models_loaded(models)
    calls = samples(text, "detect_group_calls_total")
    ok = sum(v for k, v in calls.items()
             if dict(k)["model"] == "face_detector" and dict(k)["code"] == "OK")
    assert ok >= 6 and {dict(k)["group"] for k in calls} <= set(pod["models"])
    for group in pod["models"]:  # each group's calls went through its own cluster
        routed = stat(pod["admin"], f"cluster.triton_{group}.upstream_rq_total")
        proxied = sum(v for k, v in calls.items() if dict(k)["group"] == group)
        assert routed >= proxied
    assert stat(pod["admin"], "cluster.triton.upstream_rq_total") == 0


def experiments_in_force(target: str) -> list[str]:
    with grpc.insecure_channel(target) as channel:
        reply = operations_pb2_grpc.OperationsStub(channel).ListExperiments(
            operations_pb2.ListExperimentsRequest(), timeout=5)
    return [f"{e.model}: " + ", ".join(f"{v.name}=v{v.version}" for v in e.variants)
            for e in reply.experiments]


TRIAL = """
[face_detector]
salt = "pod-test"
[[face_detector.variants]]
name = "control"
version = "1"
weight = 1
"""


def test_an_updated_experiments_configmap_is_applied_without_a_restart(pod, dev_tls):
    shipped = pod["shipped_experiments"].read_text()
    assert experiments_in_force(pod["target"]) == []  # the shipped file has none
    configmap_volume(pod["experiments"], {"experiments.toml": shipped + TRIAL})
    wait_for(lambda: experiments_in_force(pod["target"]) == ["face_detector: control=v1"],
             10, "the updated ConfigMap in force")
    with tls_channel(pod, dev_tls) as channel:
        reply = detect_pb2_grpc.DetectorStub(channel).Detect(
            detect_pb2.DetectRequest(image=(TESTDATA / "astronaut.png").read_bytes()),
            timeout=10)
    assert (reply.model_version, reply.variant) == ("1", "control")
    configmap_volume(pod["experiments"], {"experiments.toml": shipped})
    wait_for(lambda: experiments_in_force(pod["target"]) == [], 10, "the shipped file again")


def test_ops_listener_serves_metrics_and_probes_and_nothing_of_the_admin(pod, dev_tls):
    with tls_channel(pod, dev_tls) as channel:
        detect(channel)
    status, proxy_metrics = ops_get(pod["ops"], "/metrics")
    assert status == 200 and "detect_in_flight" in proxy_metrics  # the HPA's metric
    status, envoy_metrics = ops_get(pod["ops"], "/stats/prometheus")
    assert status == 200 and "envoy_cluster_upstream_rq_total" in envoy_metrics
    for path in ("/clusters", "/config_dump", "/quitquitquit", "/drain_listeners", "/"):
        assert ops_get(pod["ops"], path)[0] == 404, path
    assert health(pod["ops_target"]) == health_pb2.HealthCheckResponse.SERVING


def test_liveness_probe_command_succeeds(pod):
    command = container(pod["deployment"], "proxy")["livenessProbe"]["exec"]["command"]
    args = replaced(command[1:], {"--target": pod["target"]})
    result = subprocess.run([*PODCTL, *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    # The readiness-style check fails on a server that does not answer at all.
    down = subprocess.run([*PODCTL, "health", "--target", f"127.0.0.1:{free_port()}",
                           "--timeout-s", "0.5"], capture_output=True, text=True, timeout=30)
    assert down.returncode == 1


def test_prestop_drains_callers_while_calls_to_triton_go_on(pod, dev_tls):
    """Last: the pod's front listener is closed afterwards, as in a terminating pod."""
    command = container(pod["deployment"], "proxy")["lifecycle"]["preStop"]["exec"]["command"]
    assert flag(command, "--admin") == "127.0.0.1:9901"
    args = replaced(command[1:], {"--admin": f"127.0.0.1:{pod['admin']}", "--wait-s": "0"})
    with tls_channel(pod, dev_tls) as channel:
        assert detect(channel) == 1
        before = stat(pod["admin"], "http.front.downstream_cx_drain_close")
        result = subprocess.run([*PODCTL, *args], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        # While the listener drains, calls still succeed; each connection is told to go.
        assert detect(channel) == 1
        assert stat(pod["admin"], "http.front.downstream_cx_drain_close") > before
    deadline = time.monotonic() + DRAIN_TIME_S + 5
    while time.monotonic() < deadline:
        try:
            with tls_channel(pod, dev_tls) as channel:
                detect(channel)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
            break
        time.sleep(0.2)
    else:
        pytest.fail("the front listener never closed after the drain time")
    # The egress stays up for calls still in flight: the proxy still reaches Triton.
    assert health(pod["target"]) == health_pb2.HealthCheckResponse.SERVING
