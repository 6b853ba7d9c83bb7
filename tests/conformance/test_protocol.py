"""Every RPC of Triton's gRPC protocol that the proxy and the tests use, through tritonclient's
sync and aio clients, on localtriton and on the genuine tritonserver alike. Where the two
differ on purpose, the test pins each side (README, "Where localtriton differs from Triton")."""

from __future__ import annotations

import asyncio
import inspect

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from detect_stack.detector_client import image_input
from detect_stack.servers import TRITON


class SyncAdapter:
    def __init__(self, url: str) -> None:
        self.client = grpcclient.InferenceServerClient(url)
        self.module = grpcclient

    def call(self, method: str, *args, **kwargs):
        return getattr(self.client, method)(*args, **kwargs)

    def close(self) -> None:
        self.client.close()


class AioAdapter:
    """Drives the aio client from synchronous tests on a private event loop."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = self.loop.run_until_complete(self._make(url))
        self.module = aioclient

    @staticmethod
    async def _make(url: str) -> aioclient.InferenceServerClient:
        return aioclient.InferenceServerClient(url)

    def call(self, method: str, *args, **kwargs):
        result = getattr(self.client, method)(*args, **kwargs)
        return self.loop.run_until_complete(result) if inspect.isawaitable(result) else result

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


@pytest.fixture(params=["sync", "aio"], scope="module")
def client(request, triton_url):
    adapter = SyncAdapter(triton_url) if request.param == "sync" else AioAdapter(triton_url)
    yield adapter
    adapter.close()


def test_server_live_ready_and_metadata(client, backend):
    assert client.call("is_server_live")
    assert client.call("is_server_ready")
    meta = client.call("get_server_metadata")
    # Deviation: localtriton names itself, so that a log or a probe tells the two apart.
    assert meta.name == ("triton" if backend == TRITON else "localtriton")
    assert {"statistics", "model_configuration"} <= set(meta.extensions)


def test_model_ready(client):
    assert client.call("is_model_ready", "face_detector")
    assert client.call("is_model_ready", "centerface", "1")
    assert not client.call("is_model_ready", "no_such_model")
    assert not client.call("is_model_ready", "centerface", "7")


def onnx_platform(backend: str) -> str:
    """The CPU build of tritonserver has no onnxruntime backend: its derived repository serves
    onnxruntime models through the Python backend (detect_localtriton.cpu_repository)."""
    return "python" if backend == TRITON else "onnxruntime_onnx"


def test_model_metadata(client, backend):
    meta = client.call("get_model_metadata", "face_detector")
    assert meta.name == "face_detector"
    assert meta.platform == "ensemble"
    assert list(meta.versions) == ["1"]
    inputs = [(t.name, t.datatype, list(t.shape)) for t in meta.inputs]
    assert inputs == [("IMAGE", "BYTES", [-1, 1])]
    outputs = {t.name: (t.datatype, list(t.shape)) for t in meta.outputs}
    assert outputs == {
        "num_detections": ("INT32", [-1, 1]),
        "detection_boxes": ("FP32", [-1, 100, 4]),
        "detection_scores": ("FP32", [-1, 100]),
        "detection_classes": ("INT32", [-1, 100]),
    }
    assert client.call("get_model_metadata", "centerface").platform == onnx_platform(backend)


def test_model_config(client, backend):
    config = client.call("get_model_config", "centerface").config
    assert config.name == "centerface"
    if backend == TRITON:
        assert (config.platform, config.backend) == ("", "python")
    else:
        assert (config.platform, config.backend) == ("onnxruntime_onnx", "onnxruntime")
    assert config.max_batch_size == 8
    assert config.instance_group[0].count == 1
    assert config.HasField("dynamic_batching")
    ensemble = client.call("get_model_config", "face_detector").config
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [
        "preprocess", "centerface", "postprocess"]


def test_unknown_model_is_not_found(client):
    with pytest.raises(InferenceServerException) as err:
        client.call("get_model_metadata", "no_such_model")
    assert err.value.status() == "StatusCode.NOT_FOUND"
    assert "Request for unknown model: 'no_such_model' is not found" in err.value.message()


def test_infer_raw_tensors_both_ways_and_request_id_echoed(client, images, backend):
    result = client.call("infer", "face_detector", [image_input(images["astronaut.png"])],
                         request_id="req-42",
                         outputs=[client.module.InferRequestedOutput("num_detections"),
                                  client.module.InferRequestedOutput("detection_boxes")])
    response = result.get_response()
    assert response.id == "req-42"
    assert response.model_name == "face_detector"
    assert response.model_version == "1"
    # Triton's order of outputs is its own (neither the request's nor the config's): clients
    # look outputs up by name.
    assert sorted(o.name for o in response.outputs) == ["detection_boxes", "num_detections"]
    if backend != TRITON:  # deviation: localtriton keeps the request's order
        assert [o.name for o in response.outputs] == ["num_detections", "detection_boxes"]
    assert len(response.raw_output_contents) == 2
    assert result.as_numpy("num_detections").dtype == np.int32
    assert result.as_numpy("detection_boxes").shape == (1, 100, 4)
    assert result.as_numpy("detection_scores") is None


def test_infer_numeric_model_directly(client):
    pixels = np.zeros((2, 3, 64, 96), dtype=np.float32)
    tensor = client.module.InferInput("input", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    result = client.call("infer", "centerface", [tensor])
    assert result.as_numpy("heatmap").shape == (2, 1, 16, 24)
    assert result.as_numpy("landmarks").shape == (2, 10, 16, 24)


def test_model_statistics(client, images):
    before = client.call("get_inference_statistics", "face_detector").model_stats[0]
    client.call("infer", "face_detector", [image_input(images["coffee.png"], images["rocket.jpg"])])
    after = client.call("get_inference_statistics", "face_detector").model_stats[0]
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1
    assert after.inference_count == before.inference_count + 2
    assert after.inference_stats.success.ns > before.inference_stats.success.ns
    assert after.last_inference >= before.last_inference
    every = client.call("get_inference_statistics").model_stats
    assert {s.name for s in every} == {"centerface", "face_detector", "null_detector",
                                       "postprocess", "preprocess", "nanodet",
                                       "object_detector"}
    pre = client.call("get_inference_statistics", "preprocess", "1").model_stats[0]
    assert pre.execution_count >= 1
    assert pre.inference_stats.compute_infer.count >= 1
    assert pre.inference_stats.compute_infer.ns > 0
    assert sum(b.compute_infer.count for b in pre.batch_stats) == pre.execution_count
    assert sum(b.batch_size * b.compute_infer.count for b in pre.batch_stats) == pre.inference_count


def test_repository_index(client):
    index = client.call("get_model_repository_index")
    assert {(m.name, m.version, m.state) for m in index.models} == {
        ("centerface", "1", "READY"), ("face_detector", "1", "READY"),
        ("null_detector", "1", "READY"),
        ("postprocess", "1", "READY"), ("preprocess", "1", "READY"),
        ("nanodet", "1", "READY"), ("nanodet", "2", "READY"),
        ("object_detector", "1", "READY"), ("object_detector", "2", "READY")}


def test_typed_input_contents(triton_url):
    """Inputs may also arrive in InferTensorContents instead of raw bytes."""
    with grpc.insecure_channel(triton_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="centerface")
        tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 3, 32, 32])
        tensor.contents.fp32_contents.extend([0.0] * (3 * 32 * 32))
        response = stub.ModelInfer(request)
        assert [o.name for o in response.outputs] == ["heatmap", "scale", "offset", "landmarks"]
        assert list(response.outputs[0].shape) == [1, 1, 8, 8]


def test_health_check_answers_for_the_server_and_watch_is_unimplemented(triton_url):
    """Triton's health service reports the server's state whatever service is named, and has
    no Watch: balancers must poll Check."""
    with grpc.insecure_channel(triton_url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService", "no.such.Service"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            next(stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5))
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_no_server_reflection(triton_url):
    """Triton serves no reflection: grpcurl needs Triton's .proto files (or tritonclient)."""
    with grpc.insecure_channel(triton_url) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        with pytest.raises(grpc.RpcError) as err:
            next(replies)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
