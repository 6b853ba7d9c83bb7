"""`make run` brings the whole stack up, shows how to call it, and Ctrl-C leaves nothing."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import redis
import tritonclient.grpc as grpcclient

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_proxy.contract import ROUTING_KEY_HEADER
from detect_proxy.experiments import bucket
from detect_stack.makerun import make_run
from detect_stack.promtext import scrape, value
from detect_stack.reference_centerface import iou
from detect_stack.servers import ROOT, TESTDATA, TRITON, wait_for


def test_make_run_then_ctrl_c(tmp_path, backend):
    with make_run(tmp_path, backend) as run:
        ports = run.ports
        text = run.log()
        assert "detect_proxy 2/2, triton 2/2" in text
        assert f"grpcurl -cacert build/certs/ca.crt localhost:{ports['FRONT_PORT']} list" in text
        assert "1 detection(s)" in text and "face 0.9" in text
        url = f"http://127.0.0.1:{ports['PROMETHEUS_PORT']}/-/ready"
        assert urllib.request.urlopen(url, timeout=5).status == 200
        for port in ("TRITON1_PORT", "TRITON2_PORT"):
            with grpcclient.InferenceServerClient(f"127.0.0.1:{ports[port]}") as client:
                name = client.get_server_metadata().name
            assert name == ("triton" if backend == TRITON else "localtriton")
        # An oversized image is INVALID_ARGUMENT naming the limit, whoever answers first.
        with run.channel() as channel:
            stub = detect_pb2_grpc.DetectorStub(channel)
            # Callers see the detector only: pipeline steps and the benchmark model are hidden.
            listed = stub.ListModels(detect_pb2.ListModelsRequest(), timeout=10)
            assert [m.name for m in listed.models] == ["face_detector", "object_detector"]
            # The COCO detector, under make run's experiment (deploy/experiments.toml): each
            # caller key sticks to its version, and the answer says which.
            seen = set()
            points = {f"caller-{i}": bucket("nanodet-320-trial", f"caller-{i}")
                      for i in range(100)}
            keys = (min(points, key=points.__getitem__), max(points, key=points.__getitem__))
            for key in keys:  # the first lands on control (90%), the second on candidate
                metadata = [(ROUTING_KEY_HEADER, key)]
                found = [stub.Detect(detect_pb2.DetectRequest(
                    image=(TESTDATA / "astronaut.png").read_bytes(), model="object_detector",
                    min_score=0.5), timeout=30, metadata=metadata) for _ in range(2)]
                assert found[0].variant == found[1].variant in ("control", "candidate")
                assert {"control": "1", "candidate": "2"}[found[0].variant] == \
                    found[0].model_version
                assert [d.label for d in found[0].detections] == ["person"]
                seen.add(found[0].variant)
            assert seen == {"control", "candidate"}
            # A 12 MP phone photo (decoded at reduced scale) finds the face the 1 MP one
            # does, in its own pixels.
            boxes = {}
            for name in ("phone-12mp.jpg", "phone-1mp.jpg"):
                answer = stub.Detect(detect_pb2.DetectRequest(
                    image=(TESTDATA / name).read_bytes(), model="face_detector"), timeout=30)
                assert len(answer.detections) == 1, (name, answer)
                b = answer.detections[0].box
                boxes[name] = np.array([b.x_min, b.y_min, b.x_max, b.y_max])
            assert iou(boxes["phone-12mp.jpg"], boxes["phone-1mp.jpg"] * 4032 / 1152) >= 0.95
            for size in (8 * 1024 * 1024 + 1, 20_000_000):
                try:
                    stub.Detect(detect_pb2.DetectRequest(image=b"\x89PNG" + b"\x00" * size),
                                timeout=30)
                    raise AssertionError("an oversized image was accepted")
                except grpc.RpcError as err:
                    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
                    assert "limit" in err.details()
            # A repeated image is a cache hit, whichever proxy takes it: the answer is in
            # Redis, which both share.
            image = (TESTDATA / "phone-1mp.jpg").read_bytes()
            with redis.Redis("127.0.0.1", int(ports["REDIS_PORT"])) as shared:
                key = f"detect:*:{hashlib.sha256(image).hexdigest()}"
                wait_for(lambda: any(True for _ in shared.scan_iter(match=key)), 5, "in Redis")

            def hits() -> float:
                return sum(value(scrape(int(ports[p])), "detect_cache_lookups_total",
                                 result="hit") for p in ("PROXY1_METRICS_PORT",
                                                         "PROXY2_METRICS_PORT"))

            before = hits()
            again = stub.Detect(detect_pb2.DetectRequest(image=image), timeout=30)
            assert hits() == before + 1
            b = again.detections[0].box
            assert np.array_equal([b.x_min, b.y_min, b.x_max, b.y_max], boxes["phone-1mp.jpg"])
        # The detect command's batch and stream modes, as a user runs them against the stack.
        detect = str(Path(sys.executable).parent / "detect")
        pngs = sorted(str(p) for p in TESTDATA.glob("*.png"))
        target = ["--target", f"localhost:{ports['FRONT_PORT']}", "--ca-file",
                  "build/certs/ca.crt", "--json"]
        for mode in ("batch", "stream"):
            out = subprocess.run([detect, mode, *pngs, *target], capture_output=True, text=True,
                                 timeout=120, cwd=ROOT)
            assert out.returncode == 0, out.stderr
            assert len(out.stdout.splitlines()) == len(pngs), out.stdout
        # The operator's view, on a proxy's own listener: one group, the detector ready.
        out = subprocess.run([detect, "ops", "groups", "--plaintext", "--target",
                              f"127.0.0.1:{ports['PROXY1_PORT']}"], capture_output=True,
                             text=True, timeout=60, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("default (up, ") and "face_detector" in out.stdout
        # make run's Triton loads every model at start: moving one is refused, saying why.
        out = subprocess.run([detect, "ops", "unload", "face_detector", "--group", "default",
                              "--plaintext", "--target", f"127.0.0.1:{ports['PROXY1_PORT']}"],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert out.returncode == 1 and "FAILED_PRECONDITION" in out.stderr, out.stderr
        assert "--model-control-mode=explicit" in out.stderr
        out = subprocess.run([detect, "ops", "experiments", "--plaintext", "--target",
                              f"127.0.0.1:{ports['PROXY1_PORT']}"], capture_output=True,
                             text=True, timeout=60, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        assert "object_detector (salt nanodet-320-trial, shadow: version 2 at 0.2)" in out.stdout
        assert "candidate: version 2, weight 10, in the split" in out.stdout
        everything = run.descendants()
        assert len(everything) >= 7, everything  # 2 backends, 2 proxies, Envoy, Prometheus
        run.interrupt()
        deadline = time.monotonic() + 10
        while run.alive(everything) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert run.alive(everything) == [], "processes left behind"
