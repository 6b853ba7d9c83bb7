"""A real Prometheus scrapes the stack during traffic; every dashboard query returns data."""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_observability import prometheus as prom_config
from detect_proxy.contract import DECLARED_IMAGES_HEADER, DETECT, ROUTING_KEY_HEADER, SERVICE
from detect_stack.servers import ROOT, free_port, running
from detect_stack.stack import admin_post, stack

DASHBOARD = json.loads((ROOT / "observability" / "dashboard.json").read_text())
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


EXPERIMENT = """
[object_detector]
salt = "dashboard"
[[object_detector.variants]]
name = "control"
version = "1"
weight = 1
[[object_detector.variants]]
name = "candidate"
version = "2"
weight = 1
[object_detector.shadow]
version = "2"
fraction = 1.0
"""


def query(port: int, expr: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def expressions() -> list[str]:
    return [t["expr"] for panel in DASHBOARD["panels"] for t in panel["targets"]]


def _traffic(s) -> None:
    with s.envoy.channel() as channel:
        stub = detect_pb2_grpc.DetectorStub(channel)
        image = (ROOT / "build/testdata/coffee.png").read_bytes()
        # Past the result cache, concurrent: Triton batches them.
        request = detect_pb2.DetectRequest(image=image, skip_cache=True)
        with ThreadPoolExecutor(24) as pool:
            list(pool.map(lambda _: stub.Detect(request, timeout=60), range(72)))
        for _ in range(4):  # cached answers
            stub.Detect(detect_pb2.DetectRequest(image=image), timeout=60)
        declared = [(DECLARED_IMAGES_HEADER, "2")]
        stub.DetectBatch(detect_pb2.DetectBatchRequest(images=[image, b""]), timeout=60,
                         metadata=declared)
        list(stub.DetectStream(iter([detect_pb2.DetectStreamRequest(
            id="1", request=detect_pb2.DetectRequest(image=image))]), timeout=60,
            metadata=declared))
        for i in range(8):  # an experiment's variants, each v1 answer shadowed on v2
            stub.Detect(detect_pb2.DetectRequest(image=image, model="object_detector"),
                        timeout=60, metadata=[(ROUTING_KEY_HEADER, f"caller-{i}")])
        for _ in range(3):  # errors, labelled by code
            with pytest.raises(grpc.RpcError):
                stub.Detect(detect_pb2.DetectRequest(image=b""), timeout=10)
        admin_post(s.envoy.admin_port, "/runtime_modify?detect.ratelimit.lockdown=100")
        limited = 0
        for _ in range(40):  # rate-limited calls
            try:
                stub.Detect(detect_pb2.DetectRequest(image=b""), timeout=10,
                            metadata=[("x-client-id", "noisy")])
            except grpc.RpcError as err:
                limited += err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        admin_post(s.envoy.admin_port, "/runtime_modify?detect.ratelimit.lockdown=0")
        assert limited > 0


def test_every_dashboard_query_returns_data(tmp_path, backend):
    assert expressions(), "dashboard has no queries"
    experiments = tmp_path / "experiments.toml"
    experiments.write_text(EXPERIMENT)
    with stack(tmp_path, global_rps=1000, global_burst=2000, client_rps=200,
               client_burst=400, backend=backend,
               proxy_flags=("--cache-max-bytes", str(8 << 20),
                            "--exposed-models", "face_detector,object_detector",
                            "--experiments", str(experiments))) as s:
        config = tmp_path / "prometheus.yml"
        config.write_text(json.dumps(prom_config.render(
            s.proxy_metrics, f"127.0.0.1:{s.envoy.admin_port}", s.triton_metrics, "1s")))
        port = free_port()
        args = [PROMETHEUS, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}", "--log.level=warn"]

        def ready() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as r:
                return r.status == 200

        def targets_up() -> int:
            url = f"http://127.0.0.1:{port}/api/v1/targets"
            targets = json.loads(urllib.request.urlopen(url, timeout=5).read())
            return len([t for t in targets["data"]["activeTargets"] if t["health"] == "up"])

        with running(args, tmp_path / "prometheus.log", ready):
            deadline = time.monotonic() + 30
            while targets_up() < 5:
                assert time.monotonic() < deadline, "Prometheus never reached every target"
                time.sleep(0.5)
            _traffic(s)
            time.sleep(3)  # a few more scrapes after the traffic

            empty = [e for e in expressions() if not query(port, e)]
            assert empty == [], f"dashboard queries without data: {empty}"
            # Envoy's per-method series name the whole gRPC service and method.
            methods = query(port, 'sum by (envoy_grpc_bridge_service, envoy_grpc_bridge_method) '
                                  '(increase(envoy_cluster_grpc_total[1m]))')
            assert (SERVICE, DETECT) in {(m["metric"].get("envoy_grpc_bridge_service"),
                                          m["metric"].get("envoy_grpc_bridge_method"))
                                         for m in methods}, methods
            ratio = query(port, 'sum(rate(nv_inference_count{model="centerface"}[1m])) / '
                                'sum(rate(nv_inference_exec_count{model="centerface"}[1m]))')
            assert float(ratio[0]["value"][1]) > 1.0, "no batching seen under load"
            per_replica = query(port, 'sum by (instance) (increase('
                                      'nv_inference_request_success{model="face_detector"}[1m]))')
            assert len(per_replica) == 2
