"""The Kubernetes manifests are valid, complete and consistent, checked offline.

Schemas: the Kubernetes OpenAPI schemas bundled in the kubernetes-validate package (strict:
an unknown or misspelt field fails), for the oldest Kubernetes the manifests support (1.30:
the preStop sleep action is on by default from 1.30) and the newest the package bundles.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from detect_deploy import configs
from detect_deploy.manifests import (
    DEPLOY,
    K8S,
    argv,
    container,
    find,
    k8s_documents,
    pod_labels,
    selects,
    triton_deployments,
)

ENVOY = str(Path(sys.executable).parent / "envoy")
OLDEST = "1.30.0"
VERSIONS = [OLDEST, kubernetes_validate.latest_version()]


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def generated_objects() -> list[dict]:
    """The ConfigMap and Secret the kustomization's generators produce, as kustomize would
    (data from the generator's files; TLS files are never committed, so stand-ins here)."""
    k = kustomization()
    out = []
    for g in k["configMapGenerator"]:
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": g["name"]},
                    "data": {f.rsplit("/", 1)[-1]: (K8S / f).read_text() for f in g["files"]}})
    for g in k["secretGenerator"]:
        out.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": g["name"]},
                    "type": g["type"],
                    "data": {f.rsplit("/", 1)[-1]: base64.b64encode(b"pem").decode()
                             for f in g["files"]}})
    return out


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(version):
    docs = k8s_documents() + [("kustomization generators", d) for d in generated_objects()]
    kinds = {d["kind"] for _, d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "NetworkPolicy", "ConfigMap", "Secret", "Namespace"} <= kinds
    for name, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']} at {path}: {exc.message}")


def test_the_validator_rejects_a_misspelt_field():
    deployment = find("Deployment", "detect-proxy")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest_and_its_generated_files_exist():
    k = kustomization()
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(k["resources"]) == sorted(on_disk)
    assert k["namespace"] == "detect"
    for g in k["configMapGenerator"]:
        for f in g["files"]:
            assert (K8S / f).is_file(), f
    # TLS files are the operator's, never committed.
    ignored = (DEPLOY / ".gitignore").read_text().splitlines()
    for g in k["secretGenerator"]:
        assert g["type"] == "kubernetes.io/tls"
        assert {f.rsplit("/", 1)[-1] for f in g["files"]} == {"tls.crt", "tls.key"}
        assert all(f.startswith("tls/") for f in g["files"]) and "k8s/tls/" in ignored


def test_generated_configs_match_what_the_renderers_produce_now():
    stale = configs.stale()
    assert stale == [], "run .venv/bin/python -m detect_deploy.configs\n" + "\n".join(stale)


@pytest.mark.parametrize("name", ["k8s/envoy/envoy.yaml", "compose/envoy.yaml"])
def test_rendered_envoy_configs_pass_envoy_validate(name, dev_tls):
    configs.validate_envoy(DEPLOY / name, ENVOY, dev_tls)


def _labels(deployment: dict) -> dict:
    return deployment["spec"]["template"]["metadata"]["labels"]


def _matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_selectors_ports_and_references_line_up():
    docs = [d for _, d in k8s_documents()]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    generated = {(d["kind"], d["metadata"]["name"]) for d in generated_objects()}
    accounts = {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
    for d in deployments.values():
        spec = d["spec"]["template"]["spec"]
        assert _matches(d["spec"]["selector"]["matchLabels"], _labels(d))
        assert spec["serviceAccountName"] in accounts
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in spec["containers"] + spec.get("initContainers", []):
            for mount in c.get("volumeMounts", []):
                assert mount["name"] in volumes, (c["name"], mount["name"])
        for v in volumes.values():
            sources = v.get("projected", {}).get("sources", [v])
            for s in sources:
                if "configMap" in s:
                    assert ("ConfigMap", s["configMap"]["name"]) in generated
                if "secret" in s:
                    assert ("Secret", s["secret"]["name"]) in generated
        for constraint in spec.get("topologySpreadConstraints", []):  # Redis: one replica
            assert _matches(constraint["labelSelector"]["matchLabels"], _labels(d))
    for s in (d for d in docs if d["kind"] == "Service"):
        [target] = [d for d in deployments.values() if _matches(s["spec"]["selector"], _labels(d))]
        names = {p["name"] for c in target["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])}
        for port in s["spec"]["ports"]:
            assert port["targetPort"] in names, (s["metadata"]["name"], port)
    for pdb in (d for d in docs if d["kind"] == "PodDisruptionBudget"):
        assert any(_matches(pdb["spec"]["selector"]["matchLabels"], _labels(d))
                   for d in deployments.values())
    for hpa in (d for d in docs if d["kind"] == "HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
        assert "replicas" not in deployments[hpa["spec"]["scaleTargetRef"]["name"]]["spec"]
    for policy in (d for d in docs if d["kind"] == "NetworkPolicy"):
        selector = policy["spec"]["podSelector"].get("matchLabels", {})
        assert any(_matches(selector, _labels(d)) for d in deployments.values())


def test_network_policies_let_only_proxies_reach_triton():
    triton = find("NetworkPolicy", "triton")["spec"]
    grpc_rules = [r for r in triton["ingress"] if {"port": 8001, "protocol": "TCP"} in r["ports"]]
    assert [r["from"] for r in grpc_rules] == [
        [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "detect-proxy"}}}]]
    # One policy for every Triton group, and the proxies may reach every group's gRPC port
    # (calls through their Envoy, model indexes and model control from the proxy itself).
    proxy_egress = find("NetworkPolicy", "detect-proxy")["spec"]["egress"]
    grpc_to = [peer["podSelector"]["matchLabels"] for rule in proxy_egress
               if {"port": 8001, "protocol": "TCP"} in rule["ports"] for peer in rule["to"]]
    assert len(triton_deployments()) >= 2
    for deployment in triton_deployments():
        labels = pod_labels(deployment)
        assert selects(triton["podSelector"]["matchLabels"], labels)
        assert any(selects(selector, labels) for selector in grpc_to)
    proxy = find("NetworkPolicy", "detect-proxy")["spec"]
    open_ports = {p["port"] for r in proxy["ingress"] for p in r["ports"]}
    # The proxy's own port (loopback) and Envoy's admin are not among them.
    assert open_ports == {8443, 9100}
    deny = find("NetworkPolicy", "default-deny")["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny


def test_network_policies_let_only_proxies_reach_redis():
    """Redis has no password: the policies are what keeps everything but the proxies out."""
    proxy_pods = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "detect-proxy"}}}
    redis_pods = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "redis"}}}
    port = [{"port": 6379, "protocol": "TCP"}]
    redis = find("NetworkPolicy", "redis")["spec"]
    assert redis["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "redis"}}
    assert redis["ingress"] == [{"from": [proxy_pods], "ports": port}]
    assert set(redis["policyTypes"]) == {"Ingress", "Egress"} and "egress" not in redis
    proxy = find("NetworkPolicy", "detect-proxy")["spec"]
    assert {"to": [redis_pods], "ports": port} in proxy["egress"]
    # Nothing else in the namespace may send to Redis.
    for _, doc in k8s_documents():
        if doc["kind"] == "NetworkPolicy" and doc["metadata"]["name"] != "detect-proxy":
            assert all(redis_pods not in rule.get("to", [])
                       for rule in doc["spec"].get("egress", [])), doc["metadata"]["name"]


def test_containers_run_unprivileged_read_only_with_resources():
    for _, d in k8s_documents():
        if d["kind"] != "Deployment":
            continue
        spec = d["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            uid = sc.get("runAsUser", spec["securityContext"].get("runAsUser"))
            assert uid and uid > 0, c["name"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), c["name"]
            assert "memory" in c["resources"]["limits"], c["name"]
            image = c["image"]
            assert ":" in image and not image.endswith(":latest"), image
    for deployment in triton_deployments():
        triton = container(deployment, "triton")["resources"]
        assert triton["requests"]["nvidia.com/gpu"] == triton["limits"]["nvidia.com/gpu"] == 1


@pytest.mark.parametrize("deployment", triton_deployments(),
                         ids=lambda d: d["metadata"]["name"])
def test_triton_serves_the_model_repository_volume_read_only(deployment):
    spec = deployment["spec"]["template"]["spec"]
    [init] = spec["initContainers"]
    repo = next(m for m in init["volumeMounts"] if m["name"] == "model-repository")
    assert argv(init) == ["cp", "-a", "/models/.", repo["mountPath"] + "/"]
    mount = next(m for m in container(deployment, "triton")["volumeMounts"]
                 if m["name"] == "model-repository")
    assert mount["readOnly"] is True
    args = container(deployment, "triton")["args"]
    assert f"--model-repository={mount['mountPath']}" in args


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_builds_with_kubectl_when_available(tmp_path, dev_tls):
    """Optional: where kubectl is installed, its kustomize renders the kustomization and
    rewrites the generated names into the Deployment."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    (copy / "tls").mkdir(exist_ok=True)
    for name in ("tls.crt", "tls.key"):
        shutil.copy(dev_tls / name, copy / "tls" / name)
    out = subprocess.run(["kubectl", "kustomize", str(copy)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    built = [d for d in yaml.safe_load_all(out.stdout) if d]
    maps = {d["metadata"]["name"].rsplit("-", 1)[0] if "envoy" in d["metadata"]["name"]
            else d["metadata"]["name"]: d for d in built if d["kind"] == "ConfigMap"}
    assert sorted(maps) == ["detect-envoy", "detect-experiments"]
    # Envoy's gets a hash in its name (a change rolls the pods); the experiments keep theirs
    # (re-applied in place, re-read by the running proxies).
    assert maps["detect-envoy"]["metadata"]["name"] in out.stdout.split("kind: Deployment", 1)[1]
    assert "experiments.toml" in maps["detect-experiments"]["data"]
    for d in built:
        kubernetes_validate.validate(d, OLDEST, strict=True)
