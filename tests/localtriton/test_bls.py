"""BLS pieces that need no server: the request as models build it (python_backend 24.10's
constructor), and a shutdown that cannot leave a BLS caller waiting on a queued request.
The calls themselves are checked on real servers in tests/conformance/test_bls.py."""

from __future__ import annotations

import asyncio
import json
import threading

import grpc
import numpy as np
import pytest

from detect_localtriton import triton_python_backend_utils as pb_utils
from detect_localtriton.backends.base import Backend, Execution
from detect_localtriton.errors import InferenceError
from detect_localtriton.model_config import parse
from detect_localtriton.request import InferRequest
from detect_localtriton.scheduler import Scheduler
from detect_localtriton.statistics import ModelStats


def _tensor() -> pb_utils.Tensor:
    return pb_utils.Tensor("INPUT", np.zeros((1, 1), dtype=np.int32))


def test_the_request_takes_tritons_arguments_and_defaults():
    request = pb_utils.InferenceRequest(model_name="adder", inputs=[_tensor()],
                                        requested_output_names=["OUTPUT"])
    assert (request.request_id(), request.correlation_id(), request.flags(),
            request.timeout(), json.loads(request.parameters())) == ("", 0, 0, 0, {})
    assert request.requested_output_names() == ["OUTPUT"]
    # Triton's positional order: request_id, correlation_id, inputs, outputs, model_name...
    request = pb_utils.InferenceRequest("id-1", "sequence-a", [_tensor()], [], "adder", 2,
                                        parameters={"k": True})
    assert (request.request_id(), request.correlation_id()) == ("id-1", "sequence-a")
    assert json.loads(request.parameters()) == {"k": True}
    with pytest.raises(TypeError):
        pb_utils.InferenceRequest(inputs=[_tensor()], requested_output_names=[])


def test_the_request_refuses_what_triton_refuses():
    with pytest.raises(pb_utils.TritonModelException,
                       match="Expect parameters values to have type bool/int/str, found type "
                             "<class 'float'>"):
        pb_utils.InferenceRequest(model_name="m", inputs=[], requested_output_names=[],
                                  parameters={"k": 0.5})
    with pytest.raises(pb_utils.TritonModelException,
                       match="Correlation ID must be integer or string"):
        pb_utils.InferenceRequest(model_name="m", inputs=[], requested_output_names=[],
                                  correlation_id=1.5)


def test_bls_outside_execute_raises():
    request = pb_utils.InferenceRequest(model_name="m", inputs=[], requested_output_names=[])
    with pytest.raises(pb_utils.TritonModelException,
                       match="BLS is only supported during the 'execute' function."):
        request.exec()


def test_the_form_localtriton_builds_for_execute_still_works():
    request = pb_utils.InferenceRequest([_tensor()], ["OUTPUT"], "id-2", {"a": 1})
    assert request.request_id() == "id-2"
    assert [t.name() for t in request.inputs()] == ["INPUT"]
    assert json.loads(request.parameters()) == {"a": 1}


class GatedBackend(Backend):
    """Echoes its input once the gate opens."""

    def __init__(self) -> None:
        super().__init__(parse('''
            name: "m" backend: "python" max_batch_size: 8
            input [{ name: "x" data_type: TYPE_INT32 dims: [ 1 ] }]
            output [{ name: "x" data_type: TYPE_INT32 dims: [ 1 ] }]'''))
        self.gate = threading.Event()

    def execute(self, instance: int, requests: list[InferRequest]) -> Execution:
        self.gate.wait(10)
        return Execution([dict(r.inputs) for r in requests])


def test_closing_a_scheduler_fails_its_queued_requests():
    """At shutdown a queued request (a BLS call, whose caller blocks on it) is answered."""
    backend = GatedBackend()

    async def go() -> tuple[dict[str, np.ndarray], BaseException]:
        scheduler = Scheduler(backend.config, backend, ModelStats("m", "1"))
        running = asyncio.create_task(scheduler.infer(
            InferRequest("m", {"x": np.array([[1]], dtype=np.int32)})))
        queued = asyncio.create_task(scheduler.infer(
            InferRequest("m", {"x": np.array([[2]], dtype=np.int32)})))
        await asyncio.sleep(0.2)  # the first executes (held at the gate), the second queues
        assert scheduler.pending == 1
        closing = asyncio.create_task(scheduler.close())
        with pytest.raises(InferenceError) as err:
            await asyncio.wait_for(queued, 5)
        backend.gate.set()
        await closing
        return await running, err.value

    result, error = asyncio.run(go())
    assert isinstance(error, InferenceError) and error.code == grpc.StatusCode.UNAVAILABLE
    assert "Server is stopping" in error.message
    assert result["x"].tolist() == [[1]]
