"""Render the deployments' Envoy and Prometheus configurations from envoy/ and observability/.

The files under deploy/ are generated, committed (Kubernetes reads them through the
kustomization's configMapGenerator, Compose mounts them) and checked for freshness by the
tests, so a change to the renderer in envoy/ shows up in review as a change to what is
deployed. Envoy's configurations are written as YAML, keys in the renderer's order, for
reviewers to read:

    .venv/bin/python -m detect_deploy.configs            # rewrite them
    .venv/bin/python -m detect_deploy.configs --check    # exit 1 when one is stale

TLS material is never committed. ``tls-dir`` prepares the directory both deployments read
(tls.crt, tls.key) from your certificate, or a development PKI for a trial cluster:

    .venv/bin/python -m detect_deploy.configs tls-dir --out deploy/k8s/tls \\
        --cert server.crt --key server.key
    .venv/bin/python -m detect_deploy.configs tls-dir --out deploy/compose/tls --dev
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from detect_envoy import certs as pki
from detect_envoy import render
from detect_observability import prometheus

ROOT = Path(__file__).resolve().parent.parent

# Where the TLS directory is mounted in the Envoy container (Kubernetes and Compose alike).
TLS_DIR = Path("/etc/detect/tls")
SDS_FILE = render.SDS_FILE  # Envoy watches TLS_DIR and reloads this file and the certificate

# Ports inside a proxy pod (Kubernetes) or the Envoy network namespace (Compose). Only the
# front and ops ports are reachable from outside it; the rest listen on loopback.
FRONT_PORT = 8443
OPS_PORT = 9100
ADMIN_PORT = 9901
EGRESS_PORT = 8001
PROXY_PORT = 50051
PROXY_METRICS_PORT = 9464
TRITON_PORT = 8001
TRITON_METRICS_PORT = 8002

# Triton groups, one per GPU pool (Kubernetes) or GPU (Compose): the group's name as the
# proxy and Envoy know it (--triton-groups, cluster triton_NAME) -> the host that resolves
# to its replicas: the group's headless Service (Kubernetes) or Compose service. The models
# each serves are its tritonserver's --load-model flags (deploy/k8s/triton.yaml,
# compose.yaml), never listed here: the proxy learns them from the replicas.
TRITON_GROUPS = {"gpu-a": "triton-gpu-a", "gpu-b": "triton-gpu-b"}
# Calls naming no group go to Envoy's "triton" cluster (--triton): a group serving the
# proxies' default model. The proxies name a group on every call when they have groups.
DEFAULT_GROUP = "gpu-a"

# Proxy processes in the Compose deployment (detect-proxy --processes): process i listens on
# PROXY_PORT + i and serves metrics on PROXY_METRICS_PORT + i.
COMPOSE_PROXY_PROCESSES = 4

# Rate limits are per Envoy: in Kubernetes one Envoy per pod, so the cluster-wide limit is
# these times the number of pods. They sit above what one proxy process serves, so CPU and
# in-flight calls (the HPA's signals) saturate before the token buckets do.
POD_LIMITS = dict(global_rps=5000, global_burst=10000, client_rps=1000, client_burst=2000)

K8S_DIR = ROOT / "deploy" / "k8s" / "envoy"
COMPOSE_DIR = ROOT / "deploy" / "compose"
ENVOY_FILE = "envoy.yaml"  # Envoy's configuration in each directory


def triton_groups() -> list[str]:
    """Every group as NAME=HOST:PORT, the form of Envoy's --triton-group; joined by ';' it
    is the proxy's --triton-groups (DETECT_PROXY_TRITON_GROUPS)."""
    return [f"{name}={host}:{TRITON_PORT}" for name, host in TRITON_GROUPS.items()]


def default_triton() -> str:
    return f"{TRITON_GROUPS[DEFAULT_GROUP]}:{TRITON_PORT}"


def k8s_envoy(**overrides: Any) -> render.StackConfig:
    """The sidecar Envoy of a proxy pod: TLS front on the pod IP, one proxy on loopback,
    a cluster per Triton group discovered through the group's headless Service
    (STRICT_DNS), an ops listener for Prometheus and the kubelet's gRPC probe, and
    long-lived client connections recycled so they spread over pods the HPA adds."""
    settings: dict[str, Any] = dict(
        proxies=[f"127.0.0.1:{PROXY_PORT}"], tritons=[default_triton()],
        triton_groups=triton_groups(), cert_dir=TLS_DIR, front_address="0.0.0.0",
        front_port=FRONT_PORT, egress_port=EGRESS_PORT, admin_port=ADMIN_PORT, ops_port=OPS_PORT,
        proxy_metrics=f"127.0.0.1:{PROXY_METRICS_PORT}", triton_dns=True,
        max_connection_duration_s=120.0, access_log="/dev/stdout", **POD_LIMITS)
    settings.update(overrides)
    return render.StackConfig(**settings)


def compose_envoy(**overrides: Any) -> render.StackConfig:
    """Envoy on a single GPU host: the proxy processes share its network namespace (their
    loopback), each Triton group is the Compose service of its GPU."""
    settings: dict[str, Any] = dict(
        proxies=[f"127.0.0.1:{PROXY_PORT + i}" for i in range(COMPOSE_PROXY_PROCESSES)],
        tritons=[default_triton()], triton_groups=triton_groups(), cert_dir=TLS_DIR,
        front_address="0.0.0.0", front_port=FRONT_PORT, egress_port=EGRESS_PORT,
        admin_port=ADMIN_PORT, triton_dns=True, access_log="/dev/stdout", **POD_LIMITS)
    settings.update(overrides)
    return render.StackConfig(**settings)


def compose_prometheus() -> dict:
    """Prometheus shares Envoy's network namespace, so it reaches the loopback-only proxy
    metrics and Envoy admin like `make run`'s Prometheus does; each Triton group's metrics
    carry its name in the label "group", as the proxy's detect_group_* series do."""
    return prometheus.render(
        proxies=[f"127.0.0.1:{PROXY_METRICS_PORT + i}" for i in range(COMPOSE_PROXY_PROCESSES)],
        envoy_admin=f"127.0.0.1:{ADMIN_PORT}", tritons=[],
        triton_groups={name: [f"{host}:{TRITON_METRICS_PORT}"]
                       for name, host in TRITON_GROUPS.items()},
        interval="15s")


def server_sds(directory: Path = TLS_DIR) -> dict[str, Any]:
    """Envoy's SDS resource for the mounted certificate (the kubernetes.io/tls key names)."""
    return pki.server_sds(directory / "tls.crt", directory / "tls.key")


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2) + "\n"


def outputs() -> dict[Path, str]:
    """Every generated file and what it must contain."""
    return {
        K8S_DIR / ENVOY_FILE: render.to_yaml(render.render(k8s_envoy())),
        K8S_DIR / SDS_FILE: _json(server_sds()),
        COMPOSE_DIR / ENVOY_FILE: render.to_yaml(render.render(compose_envoy())),
        COMPOSE_DIR / SDS_FILE: _json(server_sds()),
        COMPOSE_DIR / "prometheus.json": _json(compose_prometheus()),
    }


def stale() -> list[str]:
    """Unified diffs of the generated files that differ from what the renderers give now."""
    diffs = []
    for path, text in outputs().items():
        current = path.read_text() if path.exists() else ""
        if current != text:
            rel = str(path.relative_to(ROOT))
            diffs.append("".join(difflib.unified_diff(
                current.splitlines(True), text.splitlines(True), rel, f"{rel} (rendered now)")))
    return diffs


def validate_envoy(path: Path, envoy: str, tls_dir: Path) -> None:
    """`envoy --mode validate` of a generated config, its TLS paths pointed at tls_dir
    (Envoy requires the watched certificate files to exist)."""
    text = path.read_text().replace(str(TLS_DIR), str(tls_dir))
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / path.name
        copy.write_text(text)
        render.validate(copy, envoy)


def tls_dir(out: Path, cert: Path | None, key: Path | None, dev_hosts: list[str] | None,
            group_id: int) -> None:
    """tls.crt, tls.key (and the SDS file Compose's Envoy reads) in one directory. Files are
    replaced atomically, so a running Envoy picks a new certificate up without a restart."""
    out.mkdir(parents=True, exist_ok=True)
    if dev_hosts is not None:
        ca = pki.load_ca(out) if (out / "ca.key").exists() else pki.make_ca(out)
        pki.make_server(out, ca, dev_hosts, stem=".tls-new")
        cert, key = out / ".tls-new.crt", out / ".tls-new.key"
    assert cert is not None and key is not None
    for source, name, mode in ((cert, "tls.crt", 0o644), (key, "tls.key", 0o640)):
        tmp = out / f".{name}.tmp"
        shutil.copyfile(source, tmp)
        tmp.chmod(mode)
        try:
            os.chown(tmp, -1, group_id)
        except PermissionError:
            print(f"note: could not give {name} to group {group_id}; make it readable by "
                  f"the Envoy container's user", file=sys.stderr)
        os.replace(tmp, out / name)
    for leftover in out.glob(".tls-new.*"):
        leftover.unlink()
    (out / SDS_FILE).write_text(_json(server_sds()))
    print(f"TLS material in {out}" + (" (development CA: ca.crt)" if dev_hosts else ""))


# Names a development certificate covers: the Service from inside the cluster, and
# port-forwards or Compose on the host.
DEV_HOSTS = ["detect", "detect.detect", "detect.detect.svc", "detect.detect.svc.cluster.local",
             "localhost", "127.0.0.1", "::1"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 (with a diff) if a generated file is stale")
    sub = parser.add_subparsers(dest="command")
    t = sub.add_parser("tls-dir", help="prepare the TLS directory the deployments mount")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--cert", type=Path, help="server certificate chain (PEM)")
    t.add_argument("--key", type=Path, help="its private key (PEM)")
    t.add_argument("--dev", action="store_true", help="issue one from a development CA")
    t.add_argument("--host", action="append", help="name for --dev (repeatable)")
    t.add_argument("--group-id", type=int, default=65532,
                   help="group that may read the key (Envoy's distroless image: 65532)")
    args = parser.parse_args(argv)
    if args.command == "tls-dir":
        both = bool(args.cert and args.key)
        if args.dev == bool(args.cert or args.key) or (not args.dev and not both):
            parser.error("tls-dir needs either --dev or both --cert and --key")
        tls_dir(args.out, args.cert, args.key, (args.host or DEV_HOSTS) if args.dev else None,
                args.group_id)
        return 0
    if args.check:
        diffs = stale()
        for diff in diffs:
            print(diff, file=sys.stderr)
        if diffs:
            print("generated deployment files are stale: "
                  "run .venv/bin/python -m detect_deploy.configs", file=sys.stderr)
        return 1 if diffs else 0
    for path, text in outputs().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
