"""ListModels: the models callers may use, with labels, versions and limits; hidden models
answer NOT_FOUND on Detect too."""

from __future__ import annotations

import json
import subprocess

import grpc
import pytest

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_proxy import contract
from detect_stack.grpcurl import GRPCURL
from detect_stack.promtext import scrape, value
from detect_stack.servers import free_port, proxy


@pytest.fixture(scope="module")
def default_proxy(tmp_path_factory, triton_url):
    """A proxy with the deployment default: the detectors (every ensemble, and the models whose
    config asks to be exposed) and nothing else."""
    metrics_port = free_port()
    with proxy(tmp_path_factory.mktemp("default"), triton_url, "--exposed-models=",
               "--max-image-bytes", "1000000", metrics_port=metrics_port) as (target, _):
        yield target, metrics_port


def test_lists_the_detectors_with_labels_versions_and_limits(default_proxy):
    target, metrics_port = default_proxy
    with grpc.insecure_channel(target) as channel:
        reply = detect_pb2_grpc.DetectorStub(channel).ListModels(
            detect_pb2.ListModelsRequest(), timeout=10)
    assert reply.default_model == "face_detector"
    face, objects = reply.models
    assert (face.name, list(face.versions), list(face.labels)) == (
        "face_detector", ["1"], ["face"])
    assert (face.limits.max_bytes, face.limits.max_width, face.limits.max_height) == (
        1_000_000, contract.MAX_IMAGE_WIDTH, contract.MAX_IMAGE_HEIGHT)
    # A Python-backend detector (not an ensemble) whose config sets "expose", two versions.
    assert (objects.name, list(objects.versions), len(objects.labels), objects.labels[0]) == (
        "object_detector", ["1", "2"], 80, "person")
    calls = value(scrape(metrics_port), "rpc_server_duration_milliseconds_count",
                  rpc_method="ListModels", status="OK")
    assert calls >= 1


@pytest.mark.parametrize("hidden", ["null_detector", "centerface", "preprocess", "nanodet"])
def test_a_hidden_model_is_not_found_like_a_missing_one(default_proxy, images, hidden):
    target, _ = default_proxy
    with grpc.insecure_channel(target) as channel:
        with pytest.raises(grpc.RpcError) as err:
            detect_pb2_grpc.DetectorStub(channel).Detect(
                detect_pb2.DetectRequest(image=images["coffee.png"], model=hidden), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == (f"model '{hidden}' is not served; "
                                   "available models: face_detector, object_detector")


def test_the_configured_list_is_what_callers_see(proxy_target):
    """The launchers of tests and benchmarks expose the benchmark model too."""
    with grpc.insecure_channel(proxy_target) as channel:
        reply = detect_pb2_grpc.DetectorStub(channel).ListModels(
            detect_pb2.ListModelsRequest(), timeout=10)
    assert [m.name for m in reply.models] == ["face_detector", "null_detector"]


def test_grpcurl_lists_models_by_reflection(default_proxy):
    target, _ = default_proxy
    out = subprocess.run([GRPCURL, "-plaintext", target, "detect.v1.Detector/ListModels"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert [m["name"] for m in reply["models"]] == ["face_detector", "object_detector"]
    assert reply["models"][0]["labels"] == ["face"]


def test_unavailable_when_no_model_server_answers(tmp_path):
    dead = f"127.0.0.1:{free_port()}"
    with proxy(tmp_path, dead, "--exposed-models=", wait_serving=False) as (target, _):
        with grpc.insecure_channel(target) as channel:
            with pytest.raises(grpc.RpcError) as err:
                detect_pb2_grpc.DetectorStub(channel).ListModels(
                    detect_pb2.ListModelsRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert err.value.details() == "the model server is unavailable; retry with backoff"
