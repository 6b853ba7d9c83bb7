"""Retries happen only for unanswered calls, within the deadline and the budget."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

from detect_proxy.breaker import CircuitBreaker, State
from detect_proxy.config import ProxyConfig
from detect_proxy.errors import ProxyError
from detect_proxy.models import from_config
from detect_proxy.telemetry import Telemetry
from detect_proxy.upstream import Upstream


def _model():
    config = mc.ModelConfig()
    text_format.Parse('''
        name: "det" max_batch_size: 8
        input [{ name: "IMAGE" data_type: TYPE_STRING dims: [1] }]
        output [{ name: "num_detections" data_type: TYPE_INT32 dims: [1] },
                { name: "detection_boxes" data_type: TYPE_FP32 dims: [2, 4] },
                { name: "detection_scores" data_type: TYPE_FP32 dims: [2] },
                { name: "detection_classes" data_type: TYPE_INT32 dims: [2] }]''', config)
    return from_config(config)


def _result() -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name="det", model_version="1")
    for name, dtype, array in [("num_detections", "INT32", np.array([[1]], np.int32)),
                               ("detection_boxes", "FP32", np.ones((1, 2, 4), np.float32)),
                               ("detection_scores", "FP32", np.array([[0.9, 0]], np.float32)),
                               ("detection_classes", "INT32", np.zeros((1, 2), np.int32))]:
        response.outputs.add(name=name, datatype=dtype, shape=array.shape)
        response.raw_output_contents.append(array.tobytes())
    return response


class FakeClient:
    """A pooled connection's ModelInfer, failing with the given codes first."""

    def __init__(self, failures: list[str]) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self, request: bytes, timeout: float, metadata=None):
        self.calls += 1
        if self.failures:
            code = grpc.StatusCode[self.failures.pop(0)]
            raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "boom")
        return _result()


class FakeConnection:
    def __init__(self, client: FakeClient) -> None:
        self.model_infer = client


class FakeChannels:
    def __init__(self, client: FakeClient) -> None:
        self.connection = FakeConnection(client)

    @contextlib.contextmanager
    def lease(self):
        yield self.connection


def _service(client: FakeClient, **overrides) -> tuple[Upstream, CircuitBreaker]:
    settings = {"metrics_port": 0, "retry_backoff_base_ms": 1, "retry_backoff_max_ms": 2,
                **overrides}
    upstream = Upstream(ProxyConfig(**settings), Telemetry(0), FakeChannels(client))
    return upstream, upstream.breaker


def _infer(service: Upstream, timeout_s: float = 5.0):
    return asyncio.run(service.infer(_model(), [b"img"], timeout_s, ["rid"]))


def test_unavailable_is_retried_then_succeeds():
    client = FakeClient(["UNAVAILABLE", "UNAVAILABLE"])
    service, breaker = _service(client)
    result = _infer(service)
    assert client.calls == 3
    assert result.as_numpy("num_detections")[0, 0] == 1
    assert breaker.state == State.CLOSED


@pytest.mark.parametrize("code", ["INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "NOT_FOUND",
                                  "DEADLINE_EXCEEDED", "INTERNAL"])
def test_answered_calls_are_never_retried(code):
    client = FakeClient([code])
    service, _ = _service(client)
    with pytest.raises(ProxyError) as err:
        _infer(service)
    assert err.value.code.name == code if code != "INTERNAL" else True
    assert client.calls == 1


def test_attempts_are_bounded():
    client = FakeClient(["UNAVAILABLE"] * 10)
    service, _ = _service(client, retry_max_attempts=2, breaker_failure_threshold=100)
    with pytest.raises(ProxyError) as err:
        _infer(service)
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert client.calls == 3


def test_no_retry_past_the_deadline():
    client = FakeClient(["UNAVAILABLE"] * 10)
    service, _ = _service(client, retry_backoff_base_ms=500, retry_backoff_max_ms=500)
    with pytest.raises(ProxyError):
        _infer(service, timeout_s=0.0001)
    assert client.calls == 1


def test_budget_caps_retries_across_calls():
    client = FakeClient(["UNAVAILABLE"] * 1000)
    service, _ = _service(client, retry_max_attempts=5, breaker_failure_threshold=10_000)
    service.budget._tokens = 3  # what is left of the budget
    service.budget.min_per_s = 0
    with pytest.raises(ProxyError):
        _infer(service)
    assert client.calls <= 1 + 3 + 1  # first try, the budgeted retries (plus call deposit)


def test_breaker_opens_and_then_fails_fast_without_calling():
    client = FakeClient(["UNAVAILABLE"] * 100)
    service, breaker = _service(client, retry_max_attempts=0, breaker_failure_threshold=3)
    for _ in range(3):
        with pytest.raises(ProxyError):
            _infer(service)
    assert breaker.state == State.OPEN
    calls = client.calls
    with pytest.raises(ProxyError) as err:
        _infer(service)
    assert client.calls == calls
    assert "circuit breaker open" in err.value.message


def test_an_upstream_cancellation_is_unavailable_to_the_caller_and_not_retried():
    """The caller did not cancel (its handler would have been cancelled instead): a hop
    dropped the call, e.g. Envoy or Triton shutting down. UNAVAILABLE says: try again."""
    client = FakeClient(["CANCELLED"])
    service, _ = _service(client)
    with pytest.raises(ProxyError) as err:
        _infer(service)
    assert err.value.code.name == "UNAVAILABLE"
    assert "retry with backoff" in err.value.message and "cancel" not in err.value.message
    assert client.calls == 1
