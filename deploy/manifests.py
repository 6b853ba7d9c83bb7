"""Readers for the deployment tests: manifests, the Compose file, rendered configs."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import yaml

from detect_stack.servers import ROOT

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"


def k8s_documents() -> list[tuple[str, dict]]:
    """(file name, resource) for every manifest the kustomization applies."""
    docs: list[tuple[str, dict]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend((path.name, d) for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def find(kind: str, name: str) -> dict:
    for _, doc in k8s_documents():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind}/{name} in deploy/k8s")


def container(deployment: dict, name: str) -> dict:
    for c in deployment["spec"]["template"]["spec"]["containers"]:
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name} in {deployment['metadata']['name']}")


def argv(c: dict) -> list[str]:
    """What the container runs: command (or the image's entrypoint) followed by args."""
    return [*c.get("command", []), *c.get("args", [])]


def port_of(c: dict, name: str) -> int:
    return next(p["containerPort"] for p in c["ports"] if p["name"] == name)


def envoy_config(path: Path) -> dict[str, Any]:
    """A rendered Envoy configuration (YAML, as deploy/configs.py writes it)."""
    return yaml.safe_load(path.read_text())


def cluster_ports(config: dict, cluster: str) -> list[tuple[str, int]]:
    for c in config["static_resources"]["clusters"]:
        if c["name"] == cluster:
            return [(e["endpoint"]["address"]["socket_address"]["address"],
                     e["endpoint"]["address"]["socket_address"]["port_value"])
                    for group in c["load_assignment"]["endpoints"] for e in group["lb_endpoints"]]
    raise AssertionError(f"no cluster {cluster}")


def cluster(config: dict, name: str) -> dict:
    return next(c for c in config["static_resources"]["clusters"] if c["name"] == name)


def listener_port(config: dict, name: str) -> int:
    for listener in config["static_resources"]["listeners"]:
        if listener["name"] == name:
            return listener["address"]["socket_address"]["port_value"]
    raise AssertionError(f"no listener {name}")


def admin_port(config: dict) -> int:
    return config["admin"]["address"]["socket_address"]["port_value"]


def flag(args: list[str], name: str) -> str:
    """Value of `--name value` or `--name=value` in an argument list."""
    for i, a in enumerate(args):
        if a == name:
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    raise AssertionError(f"{name} not in {shlex.join(args)}")


def env_of(c: dict) -> dict[str, str]:
    """A container's environment variables (the literal values)."""
    return {v["name"]: v["value"] for v in c.get("env", []) if "value" in v}


def configmap_file(deployment: dict, container_name: str, path: str) -> Path:
    """The file in deploy/k8s that a container sees at ``path``: through its volume mount,
    the pod's ConfigMap volume, and the kustomization's generator of that ConfigMap. Fails
    where a link of the chain is missing."""
    spec = deployment["spec"]["template"]["spec"]
    mount = next((m for m in container(deployment, container_name).get("volumeMounts", [])
                  if path.startswith(m["mountPath"].rstrip("/") + "/")), None)
    assert mount is not None, f"nothing is mounted at {path}"
    assert "subPath" not in mount, "a subPath mount never sees a ConfigMap update"
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert "configMap" in volume, f"volume {mount['name']} is not a ConfigMap"
    key = path[len(mount["mountPath"].rstrip("/")) + 1:]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    generator = next(g for g in kustomization["configMapGenerator"]
                     if g["name"] == volume["configMap"]["name"])
    files = [f for f in generator["files"] if f.rsplit("/", 1)[-1] == key]
    assert len(files) == 1, f"ConfigMap {generator['name']} has no key {key}"
    return K8S / files[0]


def env_here(deployment: dict, container_name: str) -> dict[str, str]:
    """A container's environment with each path into a ConfigMap volume replaced by the
    ConfigMap's source file in deploy/k8s, so the program can read it here."""
    c = container(deployment, container_name)
    mounts = [m["mountPath"].rstrip("/") + "/" for m in c.get("volumeMounts", [])
              if "configMap" in next(v for v in deployment["spec"]["template"]["spec"]["volumes"]
                                     if v["name"] == m["name"])]
    return {name: str(configmap_file(deployment, container_name, value))
            if any(value.startswith(m) for m in mounts) else value
            for name, value in env_of(c).items()}


def compose_bind_file(service: dict, path: str) -> Path:
    """The file on the host that a Compose service sees at ``path`` through a bind mount of
    its directory (relative sources are relative to deploy/, where compose.yaml lives)."""
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith(".") and path.startswith(target.rstrip("/") + "/"):
            return DEPLOY / source / path[len(target.rstrip("/")) + 1:]
    raise AssertionError(f"nothing is bind-mounted at {path}")


def pod_labels(deployment: dict) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"]["labels"])


def selects(selector: dict, labels: dict) -> bool:
    """Whether a matchLabels selector selects pods with these labels."""
    return all(labels.get(k) == v for k, v in selector.items())


def triton_deployments() -> list[dict]:
    """Every Triton group's Deployment (pods labelled app.kubernetes.io/name=triton)."""
    return [d for _, d in k8s_documents() if d["kind"] == "Deployment"
            and pod_labels(d).get("app.kubernetes.io/name") == "triton"]


def service_target(service: dict) -> dict:
    """The one Deployment whose pods a Service selects."""
    [target] = [d for _, d in k8s_documents() if d["kind"] == "Deployment"
                and selects(service["spec"]["selector"], pod_labels(d))]
    return target


def loaded_models(args: list[str]) -> list[str]:
    """The models a tritonserver command line loads at start (explicit model control)."""
    return [a.split("=", 1)[1] for a in args if a.startswith("--load-model=")] + [
        args[i + 1] for i, a in enumerate(args) if a == "--load-model"]


# tritonserver flags a test on loopback leaves to the launcher
# (detect_localtriton.tritonserver): the repository, ports and the endpoints it opens.
_LOCAL_ONLY = ("--model-repository", "--grpc-port", "--metrics-port", "--http-port",
               "--allow-http", "--allow-grpc", "--allow-metrics", "--allow-gpu-metrics")


def local_triton_flags(args: list[str]) -> list[str]:
    """A Triton container's tritonserver flags (``--flag=value`` form) for a server on
    loopback: everything but the repository, the ports and which endpoints are open."""
    assert args[0] == "tritonserver", args
    return [a for a in args[1:] if a.split("=", 1)[0] not in _LOCAL_ONLY]


def models_loaded(models: list[str], repository: Path | None = None) -> set[str]:
    """What tritonserver loads for these --load-model names: each model and, for an
    ensemble, its steps (from the model repository's configs)."""
    from detect_localtriton import model_config
    from detect_stack.servers import MODEL_REPOSITORY

    out: set[str] = set()
    pending = list(models)
    while pending:
        name = pending.pop()
        if name not in out:
            out.add(name)
            config = model_config.load((repository or MODEL_REPOSITORY) / name)
            pending += [s.model_name for s in config.ensemble_scheduling.step]
    return out
