"""Flags, ports and probes in the deployments match the programs that read them.

Container arguments are parsed with the programs' own parsers (the proxy's, localtriton's,
which names its flags after tritonserver's, podctl's) or handed to the program itself
(Envoy's command line, through `envoy --mode validate`); ports are followed from the flags
into the rendered Envoy configurations, the Services, the probes and the Prometheus targets.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from detect_deploy import capacity, configs, podctl
from detect_deploy.manifests import (
    DEPLOY,
    admin_port,
    argv,
    cluster,
    cluster_ports,
    compose_bind_file,
    configmap_file,
    container,
    env_here,
    find,
    flag,
    listener_port,
    loaded_models,
    port_of,
    triton_deployments,
)
from detect_localtriton import options as localtriton_options
from detect_proxy import config as proxy_config
from detect_stack.servers import free_port, redis_ping, running

ENVOY = str(Path(sys.executable).parent / "envoy")

# tritonserver flags localtriton does not have (it has the gRPC, keepalive and model control
# ones).
TRITONSERVER_ONLY = {"--allow-http", "--http-port", "--allow-grpc", "--allow-metrics",
                     "--allow-gpu-metrics"}


def proxy_settings(args: list[str], env: dict[str, str] | None = None,
                   monkeypatch: pytest.MonkeyPatch | None = None) -> proxy_config.ProxyConfig:
    """The proxy's settings from its command line and, given a monkeypatch, the container's
    environment (DETECT_PROXY_*), as the proxy reads them."""
    assert args[0] == "detect-proxy", args
    if env:
        assert monkeypatch is not None
        for name, value in env.items():
            monkeypatch.setenv(name, value)
    return proxy_config.parse(args[1:])


def pod_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> proxy_config.ProxyConfig:
    """The proxy container's settings; files it reads from a ConfigMap are read from the
    ConfigMap's source here (the proxy validates them at start)."""
    deployment = find("Deployment", "detect-proxy")
    return proxy_settings(argv(container(deployment, "proxy")), env_here(deployment, "proxy"),
                          monkeypatch)


def compose_proxy_settings(compose: dict,
                           monkeypatch: pytest.MonkeyPatch) -> proxy_config.ProxyConfig:
    """The Compose proxy service's settings, its experiments file read from the host's side
    of the bind mount, which must be the Kubernetes ConfigMap's file (one experiments file
    for both)."""
    service = compose["services"]["proxy"]
    env = dict(service["environment"])
    experiments = compose_bind_file(service, env["DETECT_PROXY_EXPERIMENTS"])
    assert experiments.resolve() == configmap_file(
        find("Deployment", "detect-proxy"), "proxy", env["DETECT_PROXY_EXPERIMENTS"])
    env["DETECT_PROXY_EXPERIMENTS"] = str(experiments)
    return proxy_settings(["detect-proxy", *service["command"]], env, monkeypatch)


def triton_settings(args: list[str]) -> localtriton_options.Options:
    """tritonserver's command line, read with localtriton's parser; every flag it does not
    know must be a tritonserver flag this project knows, so a misspelling fails here."""
    assert args[0] == "tritonserver", args
    known, unknown = localtriton_options.build_parser().parse_known_args(args[1:])
    assert {u.split("=", 1)[0] for u in unknown} <= TRITONSERVER_ONLY, unknown
    return localtriton_options.Options(**vars(known))


def host_port(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


def envoy_accepts(args: list[str], config: Path, tls_dir: Path, tmp_path: Path) -> None:
    """Envoy parses the container's command line and loads the configuration it names."""
    text = config.read_text().replace(str(configs.TLS_DIR), str(tls_dir))
    copy = tmp_path / config.name  # Envoy reads the file by its extension (.yaml)
    copy.write_text(text)
    i = args.index("-c")
    command = [ENVOY, "--mode", "validate", *args[:i + 1], str(copy), *args[i + 2:]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:] + result.stdout[-2000:]


# ---------------------------------------------------------------- Kubernetes proxy pod


def test_proxy_flags_parse_and_meet_the_sidecar_envoy(k8s_envoy, monkeypatch):
    settings = pod_proxy_settings(monkeypatch)
    assert settings.processes == 1  # the pod is the unit of scale
    host, port = host_port(settings.listen)
    assert host == "127.0.0.1"  # only the pod's own Envoy reaches it
    assert cluster_ports(k8s_envoy, "detect_proxy") == [(host, port)]
    egress = listener_port(k8s_envoy, "triton_egress")
    assert host_port(settings.triton_url) == ("127.0.0.1", egress)
    assert settings.groups_via_egress  # each call names its group to the sidecar
    assert cluster_ports(k8s_envoy, "proxy_metrics") == [("127.0.0.1", settings.metrics_port)]
    # Each Triton group through its headless Service, resolved continually, by the proxy
    # (its replicas' model indexes) and by Envoy (cluster triton_<group>) alike.
    assert settings.groups, "the proxy pod names its Triton groups"
    for group in settings.groups:
        [replicas] = group.replicas
        name, grpc_port = host_port(replicas)
        service = find("Service", name)
        assert service["spec"]["clusterIP"] == "None"
        assert grpc_port == next(p["port"] for p in service["spec"]["ports"]
                                 if p["name"] == "grpc")
        triton = cluster(k8s_envoy, f"triton_{group.name}")
        assert triton["cluster_type"]["name"] == "envoy.cluster.dns"
        assert cluster_ports(k8s_envoy, f"triton_{group.name}") == [(name, grpc_port)]
    # Calls naming no group (none from these proxies) go to the group of the default model.
    assert cluster(k8s_envoy, "triton")["cluster_type"]["name"] == "envoy.cluster.dns"
    assert cluster_ports(k8s_envoy, "triton") == [host_port(configs.default_triton())]


def test_envoy_sidecar_ports_probes_and_command_line(k8s_envoy, dev_tls, tmp_path):
    pod = find("Deployment", "detect-proxy")
    envoy = container(pod, "envoy")
    front, ops = listener_port(k8s_envoy, "front"), listener_port(k8s_envoy, "ops")
    assert port_of(envoy, "grpc-tls") == front and port_of(envoy, "ops") == ops
    assert envoy["readinessProbe"]["grpc"] == {"port": ops, "service": "detect.v1.Detector"}
    assert envoy["livenessProbe"]["tcpSocket"]["port"] == front
    assert pod["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(ops)
    for name in ("detect", "detect-headless"):
        [port] = find("Service", name)["spec"]["ports"]
        assert port["port"] == front and port["targetPort"] == "grpc-tls"
    # -c names the ConfigMap's file where the volume mounts it.
    args = argv(envoy)
    mount = next(m for m in envoy["volumeMounts"] if m["name"] == "envoy-config")
    volumes = pod["spec"]["template"]["spec"]["volumes"]
    volume = next(v for v in volumes if v["name"] == "envoy-config")
    assert flag(args, "-c") == f"{mount['mountPath']}/{volume['configMap']['items'][0]['path']}"
    tls = next(m for m in envoy["volumeMounts"] if m["name"] == "tls")
    assert tls["mountPath"] == str(configs.TLS_DIR)
    envoy_accepts(args, DEPLOY / "k8s" / "envoy" / "envoy.yaml", dev_tls, tmp_path)


def test_shutdown_sequence_fits_the_termination_grace_period(k8s_envoy):
    pod = find("Deployment", "detect-proxy")
    spec = pod["spec"]["template"]["spec"]
    proxy, envoy = container(pod, "proxy"), container(pod, "envoy")
    settings = proxy_settings(argv(proxy))
    drain = podctl.build_parser().parse_args(proxy["lifecycle"]["preStop"]["exec"]["command"][1:])
    assert proxy["lifecycle"]["preStop"]["exec"]["command"][0] == "/opt/venv/bin/podctl"
    assert drain.command == "drain"
    assert host_port(drain.admin) == ("127.0.0.1", admin_port(k8s_envoy))
    # The front listener is closed (Envoy --drain-time-s) before the proxy hears SIGTERM.
    assert float(flag(argv(envoy), "--drain-time-s")) <= drain.wait_s
    assert flag(argv(envoy), "--drain-strategy") == "immediate"
    proxy_done = drain.wait_s + settings.drain_delay_s + settings.shutdown_grace_s
    envoy_sleep = envoy["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert envoy_sleep >= proxy_done + 1, "Envoy must outlive the proxy's in-flight calls"
    assert spec["terminationGracePeriodSeconds"] >= envoy_sleep + 5
    assert spec["terminationGracePeriodSeconds"] >= proxy_done + 5


def test_proxy_liveness_does_not_follow_triton(k8s_envoy):
    proxy = container(find("Deployment", "detect-proxy"), "proxy")
    command = proxy["livenessProbe"]["exec"]["command"]
    assert command[0] == "/opt/venv/bin/podctl"
    probe = podctl.build_parser().parse_args(command[1:])
    assert probe.command == "health" and probe.any_status
    assert probe.target == proxy_settings(argv(proxy)).listen
    assert probe.timeout_s < proxy["livenessProbe"]["timeoutSeconds"]


def test_autoscaler_targets_agree_with_the_proxy_and_the_capacity_model():
    hpa = find("HorizontalPodAutoscaler", "detect-proxy")["spec"]
    metrics = {m["type"]: m for m in hpa["metrics"]}
    cpu = metrics["Resource"]["resource"]
    assert cpu["name"] == "cpu"
    assert cpu["target"]["averageUtilization"] == round(capacity.DEFAULT_UTILISATION * 100)
    pods = metrics["Pods"]["pods"]
    assert pods["metric"]["name"] == "detect_in_flight"  # the proxy's gauge
    settings = proxy_settings(argv(container(find("Deployment", "detect-proxy"), "proxy")))
    assert 0 < float(pods["target"]["averageValue"]) <= settings.max_in_flight / 2
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] > hpa["minReplicas"]


# ---------------------------------------------------------------- Kubernetes Triton


def _group_of(deployment: dict) -> str:
    return deployment["spec"]["template"]["metadata"]["labels"]["detect-group"]


@pytest.mark.parametrize("deployment", triton_deployments(), ids=_group_of)
def test_triton_flags_match_envoys_egress_keepalive_and_the_service(k8s_envoy, deployment):
    pod, group = deployment, _group_of(deployment)
    triton = container(pod, "triton")
    settings = triton_settings(argv(triton))
    name = f"triton_{group}"
    keepalive = cluster(k8s_envoy, name)["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"][
        "http2_protocol_options"]["connection_keepalive"]
    interval_ms = float(keepalive["interval"].rstrip("s")) * 1000
    # Envoy pings idle connections; Triton must permit that, no more often than it pings.
    assert settings.grpc_keepalive_permit_without_calls is True
    assert settings.grpc_http2_min_recv_ping_interval_without_data <= interval_ms
    assert settings.grpc_http2_max_ping_strikes >= 1
    grpc, metrics = port_of(triton, "grpc"), port_of(triton, "metrics")
    assert settings.grpc_port == grpc and settings.metrics_port == metrics
    [(service_name, port)] = cluster_ports(k8s_envoy, name)
    assert port == grpc
    ports = {p["name"]: p["port"] for p in find("Service", service_name)["spec"]["ports"]}
    assert ports == {"grpc": grpc, "metrics": metrics}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert triton[probe]["grpc"]["port"] == grpc, probe
    assert pod["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(metrics)
    assert "--allow-http=false" in argv(triton)  # gRPC only: probes and Envoy use gRPC
    # Explicit model control; ready while an operator loads or unloads a model.
    assert "--model-control-mode=explicit" in argv(triton) and loaded_models(argv(triton))
    assert "--strict-readiness=false" in argv(triton)
    # Triton drains within the grace period.
    exit_timeout = float(flag(argv(triton), "--exit-timeout-secs"))
    assert pod["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= exit_timeout + 5


def test_triton_flags_are_the_ones_the_readme_ships():
    """The README's production tritonserver command and the manifests agree on keepalive."""
    readme = (DEPLOY.parent / "README.md").read_text()
    block = readme.split("tritonserver --model-repository=/models", 1)[1].split("```", 1)[0]
    shipped = {line.strip(" \\") for line in block.splitlines() if line.strip(" \\")}
    keepalive = {a for a in shipped if a.startswith(("--grpc-keepalive", "--grpc-http2"))}
    assert keepalive
    for deployment in triton_deployments():
        assert keepalive <= set(argv(container(deployment, "triton")))


# ---------------------------------------------------------------- Compose


def test_compose_proxies_match_envoy_and_prometheus(compose, compose_envoy, monkeypatch):
    services = compose["services"]
    settings = compose_proxy_settings(compose, monkeypatch)
    host, first = host_port(settings.listen)
    ports = [(host, first + i) for i in range(settings.processes)]
    assert settings.processes == configs.COMPOSE_PROXY_PROCESSES
    assert cluster_ports(compose_envoy, "detect_proxy") == ports
    egress = listener_port(compose_envoy, "triton_egress")
    assert host_port(settings.triton_url) == ("127.0.0.1", egress)
    prometheus = configs.compose_prometheus()
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in prometheus["scrape_configs"]}
    assert jobs["detect-proxy"] == [f"127.0.0.1:{settings.metrics_port + i}"
                                    for i in range(settings.processes)]
    # Every group the proxies route to is a Compose service and a cluster of Envoy's.
    assert settings.groups
    for group in settings.groups:
        [replica] = group.replicas
        assert host_port(replica)[0] in services
        assert cluster_ports(compose_envoy, f"triton_{group.name}") == [host_port(replica)]
    assert jobs["envoy"] == [f"127.0.0.1:{admin_port(compose_envoy)}"]
    # Loopback addresses only work inside Envoy's network namespace.
    for name in ("proxy", "prometheus"):
        assert services[name]["network_mode"] == "service:envoy"


def test_compose_envoy_ports_and_command_line(compose, compose_envoy, dev_tls, tmp_path):
    envoy = compose["services"]["envoy"]
    published = {p.rsplit(":", 2)[-1] for p in envoy["ports"]}
    assert str(listener_port(compose_envoy, "front")) in published
    mounts = {v.rsplit(":", 2)[1]: v.rsplit(":", 2)[0] for v in envoy["volumes"]}
    config = mounts[flag(envoy["command"], "-c")]
    assert (DEPLOY / config).resolve() == (DEPLOY / "compose" / "envoy.yaml").resolve()
    assert str(configs.TLS_DIR) in mounts
    envoy_accepts(envoy["command"], DEPLOY / "compose" / "envoy.yaml", dev_tls, tmp_path)


@pytest.mark.parametrize("group", sorted(configs.TRITON_GROUPS))
def test_compose_triton_matches_kubernetes_and_envoy(compose, compose_envoy, group):
    name = configs.TRITON_GROUPS[group]
    triton = compose["services"][name]
    settings = triton_settings(triton["command"])
    [deployment] = [d for d in triton_deployments() if _group_of(d) == group]
    k8s_args = argv(container(deployment, "triton"))
    assert settings == triton_settings(k8s_args)  # same gRPC and keepalive settings on both
    assert loaded_models(triton["command"]) == loaded_models(k8s_args)  # and the same models
    for same in ("--model-control-mode", "--strict-readiness"):
        assert flag(triton["command"], same) == flag(k8s_args, same)
    [(host, port)] = cluster_ports(compose_envoy, f"triton_{group}")
    assert (host, port) == (name, settings.grpc_port)
    [job] = [j for j in configs.compose_prometheus()["scrape_configs"]
             if j["job_name"] == "triton"]
    assert {"targets": [f"{name}:{settings.metrics_port}"],
            "labels": {"group": group}} in job["static_configs"]
    http_port = flag(triton["command"], "--http-port")
    assert f"127.0.0.1:{http_port}/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    assert compose["services"]["proxy"]["depends_on"][name] == {"condition": "service_healthy"}


def test_compose_gives_each_triton_group_a_gpu_of_its_own(compose):
    gpus: list[str] = []
    for name in configs.TRITON_GROUPS.values():
        [device] = compose["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert "count" not in device  # device_ids name the GPU instead
        gpus += device["device_ids"]
    assert len(gpus) == len(set(gpus)) == len(configs.TRITON_GROUPS)


@pytest.mark.parametrize("image,target", [("detect-proxy", "proxy"), ("detect-models", "models")])
def test_compose_and_kubernetes_use_the_same_images(compose, image, target):
    tags = {s["image"] for s in compose["services"].values() if s["image"].startswith(image + ":")}
    for s in compose["services"].values():
        if s["image"].startswith(image + ":") and "build" in s:
            assert s["build"]["target"] == target
    deployments = [find("Deployment", "detect-proxy"), *triton_deployments()]
    k8s = {c["image"] for d in deployments
           for c in (d["spec"]["template"]["spec"]["containers"]
                     + d["spec"]["template"]["spec"].get("initContainers", []))
           if c["image"].startswith(image + ":")}
    assert tags and tags == k8s


# ---------------------------------------------------------------- Redis, the shared cache


def test_kubernetes_proxies_reach_redis_through_its_service(monkeypatch):
    url = urlsplit(pod_proxy_settings(monkeypatch).redis_url)
    assert url.scheme == "redis" and url.path == "/0"
    service = find("Service", str(url.hostname))
    [port] = [p for p in service["spec"]["ports"] if p["port"] == url.port]
    deployment = find("Deployment", "redis")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    redis_container = container(deployment, "redis")
    listens = int(flag(argv(redis_container), "--port"))
    assert port_of(redis_container, port["targetPort"]) == listens
    assert redis_container["readinessProbe"]["exec"]["command"] == [
        "redis-cli", "-p", str(listens), "ping"]
    assert redis_container["livenessProbe"]["tcpSocket"]["port"] == listens


def test_compose_proxies_reach_the_redis_service(compose, monkeypatch):
    services = compose["services"]
    proxy = services["proxy"]
    url = urlsplit(compose_proxy_settings(compose, monkeypatch).redis_url)
    assert url.scheme == "redis" and url.hostname in services
    assert url.port == int(flag(services[str(url.hostname)]["command"], "--port"))
    assert proxy["depends_on"][url.hostname]["condition"] == "service_started"


def _bytes(quantity: str) -> int:
    units = {"Mi": 1 << 20, "Gi": 1 << 30, "mb": 1 << 20, "gb": 1 << 30, "g": 1 << 30}
    for unit, factor in units.items():
        if quantity.endswith(unit):
            return int(quantity[: -len(unit)]) * factor
    return int(quantity)


def test_kubernetes_and_compose_run_the_same_redis(compose):
    k8s = container(find("Deployment", "redis"), "redis")
    service = compose["services"]["redis"]
    assert service["image"] == k8s["image"]
    assert service["command"] == argv(k8s)
    assert service["user"] == "{runAsUser}:{runAsGroup}".format(
        **find("Deployment", "redis")["spec"]["template"]["spec"]["securityContext"])
    maxmemory = _bytes(flag(argv(k8s), "--maxmemory"))
    assert maxmemory < _bytes(k8s["resources"]["limits"]["memory"])
    assert maxmemory < _bytes(service["mem_limit"])


def test_redis_runs_the_manifests_command_line_and_keeps_nothing(tmp_path):
    """The real redis-server accepts the container's command line (an unknown or misspelt
    option stops it), and runs as a bounded cache: no snapshots, no append-only file."""
    args = argv(container(find("Deployment", "redis"), "redis"))
    port = free_port()
    args[args.index("--port") + 1] = str(port)
    args += ["--bind", "127.0.0.1", "--dir", str(tmp_path)]  # loopback here, not the pod IP
    with running(args, tmp_path / "redis.log", lambda: redis_ping(port)), \
            redis.Redis(port=port, decode_responses=True) as client:
        config = client.config_get("*")
    assert config["save"] == "" and config["appendonly"] == "no"
    assert config["maxmemory-policy"] == "allkeys-lru"
    assert int(config["maxmemory"]) == _bytes(flag(args, "--maxmemory"))
    assert config["protected-mode"] == "no"  # the NetworkPolicy keeps others out
    assert list(tmp_path.iterdir()) == [tmp_path / "redis.log"]
