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
