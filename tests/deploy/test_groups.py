"""The Triton groups of the deployments line up, checked offline.

Every group the proxies are given (DETECT_PROXY_TRITON_GROUPS) is a headless Service in
front of one Deployment of Triton in explicit model-control mode, with its own
PodDisruptionBudget, GPU pool and metrics; the sidecar Envoy has its cluster and route;
Compose runs the same groups with the same models; the capacity model sizes them. Each
group's tritonserver command line, run by the genuine tritonserver (CPU build, where `make
triton` installed it), loads exactly the models the manifest says.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import grpc
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from detect_deploy import configs
from detect_deploy.manifests import (
    DEPLOY,
    argv,
    cluster,
    cluster_ports,
    container,
    env_here,
    env_of,
    find,
    k8s_documents,
    loaded_models,
    local_triton_flags,
    models_loaded,
    pod_labels,
    selects,
    service_target,
    triton_deployments,
)
from detect_localtriton import tritonserver as launcher
from detect_proxy import config as proxy_config
from detect_proxy.group_spec import GroupSpec, parse_groups
from detect_stack.servers import MODEL_REPOSITORY, TRITON, triton_server

GROUP_HEADER = "x-detect-group"


def k8s_groups() -> tuple[GroupSpec, ...]:
    proxy = container(find("Deployment", "detect-proxy"), "proxy")
    return parse_groups(env_of(proxy)["DETECT_PROXY_TRITON_GROUPS"])


def compose_groups(compose: dict) -> tuple[GroupSpec, ...]:
    return parse_groups(compose["services"]["proxy"]["environment"]["DETECT_PROXY_TRITON_GROUPS"])


def host_port(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


def deployment_of(group: GroupSpec) -> dict:
    [replicas] = group.replicas  # one DNS name: the group's headless Service
    return service_target(find("Service", host_port(replicas)[0]))


# ---------------------------------------------------------------- Kubernetes


def test_the_proxies_and_the_renderer_name_the_same_groups(monkeypatch):
    deployment = find("Deployment", "detect-proxy")
    proxy = container(deployment, "proxy")
    for name, value in env_here(deployment, "proxy").items():
        monkeypatch.setenv(name, value)
    settings = proxy_config.parse(argv(proxy)[1:])  # the proxy reads its environment so
    assert settings.groups == k8s_groups() and len(settings.groups) >= 2
    assert [f"{g.name}={','.join(g.replicas)}" for g in settings.groups] == \
        configs.triton_groups()


@pytest.mark.parametrize("group", k8s_groups(), ids=lambda g: g.name)
def test_every_group_is_a_headless_service_of_a_triton_deployment_in_explicit_mode(group):
    [replicas] = group.replicas
    host, port = host_port(replicas)
    service = find("Service", host)
    assert service["spec"]["clusterIP"] == "None"  # DNS answers with every ready pod
    assert port == next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    deployment = service_target(service)
    labels = pod_labels(deployment)
    assert labels["app.kubernetes.io/name"] == "triton"
    assert labels["detect-group"] == group.name  # relabelled into "group" by Prometheus
    args = argv(container(deployment, "triton"))
    assert "--model-control-mode=explicit" in args
    models = loaded_models(args)
    assert models and len(models) == len(set(models))
    for model in models:
        assert (MODEL_REPOSITORY / model / "config.pbtxt").is_file(), model
    # A replica stays ready (in its Service and in Envoy's cluster) while a model moves.
    assert "--strict-readiness=false" in args
    spec = deployment["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"detect-gpu-pool": group.name}  # the group's GPU pool
    for constraint in spec["topologySpreadConstraints"]:  # spread within the group
        assert constraint["labelSelector"]["matchLabels"] == deployment["spec"]["selector"][
            "matchLabels"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    metrics = next(p for p in container(deployment, "triton")["ports"] if p["name"] == "metrics")
    assert annotations["prometheus.io/port"] == str(metrics["containerPort"])
    # A voluntary disruption takes at most one replica of this group.
    pdbs = [d for _, d in k8s_documents() if d["kind"] == "PodDisruptionBudget"
            and selects(d["spec"]["selector"]["matchLabels"], labels)]
    assert [p["spec"]["maxUnavailable"] for p in pdbs] == [1]
    others = [d for d in triton_deployments()
              if d["metadata"]["name"] != deployment["metadata"]["name"]]
    assert not any(selects(pdbs[0]["spec"]["selector"]["matchLabels"], pod_labels(d))
                   for d in others)


def test_every_triton_deployment_is_a_group_of_the_proxies():
    served = {deployment_of(g)["metadata"]["name"] for g in k8s_groups()}
    assert served == {d["metadata"]["name"] for d in triton_deployments()}
    pools = [d["spec"]["template"]["spec"]["nodeSelector"]["detect-gpu-pool"]
             for d in triton_deployments()]
    assert len(pools) == len(set(pools))  # one group per GPU pool


def test_the_groups_differ_only_in_name_pool_and_models():
    """Copies of one another apart from what makes them groups, so a change to one (image,
    flags, probes, resources) is not forgotten in the other."""
    def normalised(deployment: dict) -> str:
        group = pod_labels(deployment)["detect-group"]
        text = repr(deployment).replace(group, "GROUP")
        for model in loaded_models(argv(container(deployment, "triton"))):
            text = text.replace(f"'--load-model={model}', ", "")
        return text

    [first, *rest] = triton_deployments()
    for other in rest:
        assert normalised(other) == normalised(first)


def test_the_default_model_is_served_by_every_group():
    """The detector callers use survives the loss of any one GPU pool: every group loads
    it."""
    default = proxy_config.parse([]).default_model
    for group in k8s_groups():
        assert default in loaded_models(argv(container(deployment_of(group), "triton")))


def test_the_sidecar_envoy_has_a_cluster_and_a_route_per_group(k8s_envoy):
    groups = k8s_groups()
    names = {c["name"] for c in k8s_envoy["static_resources"]["clusters"]
             if c["name"].startswith("triton")}
    assert names == {"triton"} | {f"triton_{g.name}" for g in groups}
    for group in groups:
        assert cluster(k8s_envoy, f"triton_{group.name}")["cluster_type"]["name"] == \
            "envoy.cluster.dns"
        assert cluster_ports(k8s_envoy, f"triton_{group.name}") == [
            host_port(r) for r in group.replicas]
    [egress] = [listener for listener in k8s_envoy["static_resources"]["listeners"]
                if listener["name"] == "triton_egress"]
    [hcm] = egress["filter_chains"][0]["filters"]
    [host] = hcm["typed_config"]["route_config"]["virtual_hosts"]
    routed = {r["match"]["headers"][0]["string_match"]["exact"]: r["route"]["cluster"]
              for r in host["routes"] if r["match"].get("headers")}
    assert routed == {g.name: f"triton_{g.name}" for g in groups}
    assert all(h["name"] == GROUP_HEADER for r in host["routes"]
               for h in r["match"].get("headers", []))
    # Calls naming no group: the default model's group.
    assert host["routes"][-1]["route"]["cluster"] == "triton"
    assert cluster_ports(k8s_envoy, "triton") == cluster_ports(
        k8s_envoy, f"triton_{configs.DEFAULT_GROUP}")


# ---------------------------------------------------------------- Compose, capacity


def test_compose_runs_the_same_groups_with_the_same_models(compose):
    groups = compose_groups(compose)
    assert [g.name for g in groups] == [g.name for g in k8s_groups()]
    for group in groups:
        [replicas] = group.replicas
        service = compose["services"][host_port(replicas)[0]]
        k8s = argv(container(deployment_of(group), "triton"))
        assert loaded_models(service["command"]) == loaded_models(k8s)
    prometheus = configs.compose_prometheus()
    [job] = [j for j in prometheus["scrape_configs"] if j["job_name"] == "triton"]
    assert sorted(c["labels"]["group"] for c in job["static_configs"]) == \
        sorted(g.name for g in groups)
    assert prometheus == json.loads((DEPLOY / "compose" / "prometheus.json").read_text())


def test_the_capacity_report_sizes_every_group():
    committed = (DEPLOY / "CAPACITY.md").read_text()
    command = shlex.split(committed.split("```sh\n", 1)[1].split("\n```", 1)[0])
    sized = [command[i + 1].split("=", 1)[0] for i, a in enumerate(command) if a == "--group"]
    assert sized == [g.name for g in k8s_groups()]
    makefile = (DEPLOY.parent / "Makefile").read_text()
    capacity_args = next(line for line in makefile.splitlines()
                         if line.startswith("CAPACITY_ARGS ?="))
    for name in sized:
        assert f"--group {name}=" in capacity_args


# ---------------------------------------------------------------- the real tritonserver


def _tritonserver_installed() -> bool:
    try:
        launcher.site_packages(Path(os.environ.get(launcher.VENV_ENV, ".venv-triton")))
    except launcher.SetupError:
        return False
    return True


@pytest.mark.skipif(not _tritonserver_installed(), reason="no tritonserver (make triton)")
@pytest.mark.parametrize("group", k8s_groups(), ids=lambda g: g.name)
def test_tritonserver_runs_the_groups_command_line_and_loads_its_models(group, tmp_path):
    args = argv(container(deployment_of(group), "triton"))
    with triton_server(TRITON, tmp_path, *local_triton_flags(args)) as (url, _), \
            grpc.insecure_channel(url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
    ready = {m.name for m in index.models if m.state == "READY"}
    wanted = models_loaded(loaded_models(args))
    assert ready == wanted  # each model with its ensemble's steps, nothing else
