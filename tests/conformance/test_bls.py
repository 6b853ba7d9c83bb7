"""Business logic scripting (BLS): a Python model calling other models of its server with
``pb_utils.InferenceRequest(...).exec()`` or ``await ....async_exec()``, on localtriton and
on the genuine tritonserver alike. Every answer here was first taken from tritonserver 2.51.

``adder`` has versions 1, 2 and 3 on disk and serves 1 and 2 (version_policy specific); it
returns INPUT + its version. ``caller`` (``def execute``, ``exec``) and ``async_caller``
(``async def execute``, every request of an execution in flight at once with
``async_exec``) call the model named by their MODEL input at the version in VERSION, and
answer with its OUTPUT, or with the error response's message and code in ERROR and CODE.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from detect_stack.servers import TRITON, triton_server, wait_for

ADDER_CONFIG = '''
name: "adder"
backend: "python"
max_batch_size: 8
version_policy: { specific: { versions: [ 1, 2 ] } }
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
dynamic_batching { }
'''
# A few milliseconds per execution, so that concurrent calls find the instance busy.
ADDER = '''
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.version = int(args["model_version"])

    def execute(self, requests):
        time.sleep(0.003)
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            if (x < 0).any():
                raise ValueError("negative input")
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUTPUT", x + self.version)]))
        return responses
'''
CALLER_CONFIG = '''
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] }},
        {{ name: "MODEL" data_type: TYPE_STRING dims: [ 1 ] }},
        {{ name: "VERSION" data_type: TYPE_INT64 dims: [ 1 ] }} ]
output [ {{ name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] }},
         {{ name: "ERROR" data_type: TYPE_STRING dims: [ 1 ] }},
         {{ name: "CODE" data_type: TYPE_INT32 dims: [ 1 ] }} ]
dynamic_batching {{ }}
'''
# MODEL is a model name, optionally with a twist after ":" (FP32: send INPUT as FP32;
# NOPE: ask for an output the model does not have), or "<caller>/<model>": call that caller
# to call <model>. VERSION -2 leaves model_version out (Triton's default, -1).
CALLER_COMMON = '''
import asyncio

import numpy as np
import triton_python_backend_utils as pb_utils


def tensor(request, name):
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()


def bls_request(request):
    x = tensor(request, "INPUT")
    version = int(tensor(request, "VERSION")[0, 0])
    target, _, twist = tensor(request, "MODEL")[0, 0].decode().partition(":")
    target, _, inner = target.partition("/")
    inputs = [pb_utils.Tensor("INPUT", x.astype(np.float32) if twist == "FP32" else x)]
    if inner:
        inputs += [pb_utils.Tensor("MODEL", np.array([[inner.encode()]], dtype=np.object_)),
                   pb_utils.Tensor("VERSION", np.array([[version]], dtype=np.int64))]
        version = -1
    keywords = {} if version == -2 else {"model_version": version}
    return pb_utils.InferenceRequest(
        model_name=target, inputs=inputs,
        requested_output_names=["NOPE" if twist == "NOPE" else "OUTPUT"], **keywords)


def reply(response, error="", code=-1):
    out = np.zeros((1, 1), dtype=np.int32)
    if response is None:
        pass
    elif response.has_error():
        error, code = response.error().message(), int(response.error().code())
    else:
        out = pb_utils.get_output_tensor_by_name(response, "OUTPUT").as_numpy()
    return pb_utils.InferenceResponse([
        pb_utils.Tensor("OUTPUT", out),
        pb_utils.Tensor("ERROR", np.array([[error.encode()]], dtype=np.object_)),
        pb_utils.Tensor("CODE", np.array([[code]], dtype=np.int32))])
'''
CALLER = CALLER_COMMON + '''

class TritonPythonModel:
    def initialize(self, args):
        # BLS is for execute only: here it raises.
        try:
            pb_utils.InferenceRequest(model_name="adder", inputs=[],
                                      requested_output_names=[]).exec()
            self.from_initialize = "returned"
        except Exception as exc:
            self.from_initialize = f"{type(exc).__name__}: {exc}"

    def execute(self, requests):
        return [reply(None, self.from_initialize)
                if tensor(r, "MODEL")[0, 0] == b"initialize" else reply(bls_request(r).exec())
                for r in requests]
'''
ASYNC_CALLER = CALLER_COMMON + '''

class TritonPythonModel:
    async def execute(self, requests):
        responses = await asyncio.gather(*(bls_request(r).async_exec() for r in requests))
        return [reply(response) for response in responses]
'''
CALLERS = ["caller", "async_caller"]
INTERNAL = 1  # pb_utils.TritonError.INTERNAL: the code of every BLS error response


def not_ready(model: str) -> str:
    return (f"Model {model} - Error when running inference: Failed for execute the inference "
            f"request. Model '{model}' is not ready.")


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("bls")
    for version in (1, 2, 3):
        (repository / "adder" / str(version)).mkdir(parents=True)
        (repository / "adder" / str(version) / "model.py").write_text(ADDER)
    (repository / "adder" / "config.pbtxt").write_text(ADDER_CONFIG)
    for name, code in (("caller", CALLER), ("async_caller", ASYNC_CALLER)):
        (repository / name / "1").mkdir(parents=True)
        (repository / name / "config.pbtxt").write_text(CALLER_CONFIG.format(name=name))
        (repository / name / "1" / "model.py").write_text(code)
    return repository


@pytest.fixture(scope="module")
def client(backend: str, repository: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[grpcclient.InferenceServerClient]:
    with (triton_server(backend, tmp_path_factory.mktemp(f"bls-{backend}"),
                        repository=repository) as (url, _),
          grpcclient.InferenceServerClient(url) as client):
        yield client


def call(client: grpcclient.InferenceServerClient, caller: str, model: str,
         version: int = -1, x: int = 5) -> tuple[int, str, int]:
    """What ``caller`` answers: the called model's OUTPUT, or its error message and code."""
    inputs = []
    for name, datatype, value in (("INPUT", "INT32", np.array([[x]], dtype=np.int32)),
                                  ("MODEL", "BYTES", np.array([[model.encode()]], dtype=object)),
                                  ("VERSION", "INT64", np.array([[version]], dtype=np.int64))):
        tensor = grpcclient.InferInput(name, [1, 1], datatype)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    result = client.infer(caller, inputs, client_timeout=30)
    return (int(result.as_numpy("OUTPUT")[0, 0]), result.as_numpy("ERROR")[0, 0].decode(),
            int(result.as_numpy("CODE")[0, 0]))


@pytest.mark.parametrize("caller", CALLERS)
def test_model_version_picks_a_loaded_version_and_defaults_to_the_policy(client, caller):
    assert call(client, caller, "adder", 1) == (6, "", -1)
    assert call(client, caller, "adder", 2) == (7, "", -1)
    assert call(client, caller, "adder", -1) == (7, "", -1)  # the highest loaded version
    assert call(client, caller, "adder", -2) == (7, "", -1)  # model_version left out


@pytest.mark.parametrize("caller", CALLERS)
def test_a_model_or_version_that_is_not_ready_is_an_error_response(client, caller):
    assert call(client, caller, "missing") == (0, not_ready("missing"), INTERNAL)
    assert call(client, caller, "missing", 1) == (0, not_ready("missing"), INTERNAL)
    assert call(client, caller, "adder", 3) == (0, not_ready("adder"), INTERNAL)  # not in policy
    assert call(client, caller, "adder", 7) == (0, not_ready("adder"), INTERNAL)  # no such version


@pytest.mark.parametrize("caller", CALLERS)
def test_a_failure_of_the_called_model_comes_back_in_its_own_words(client, caller, repository):
    line = next(n for n, text in enumerate(ADDER.splitlines(), 1) if "raise ValueError" in text)
    assert call(client, caller, "adder", 1, x=-1) == (
        0, "Failed to process the request(s) for model 'adder_0', message: ValueError: "
           f"negative input\n\nAt:\n  {repository}/adder/1/model.py({line}): execute\n",
        INTERNAL)


@pytest.mark.parametrize("caller", CALLERS)
def test_a_request_the_called_model_refuses_is_an_error_response(client, caller, backend):
    refused = "Model adder - Error when running inference: "
    assert call(client, caller, "adder:NOPE") == (
        0, refused + "unexpected inference output 'NOPE' for model 'adder'", INTERNAL)
    # Pinned: Triton puts the request id before most of its checks' words; localtriton not.
    request_id = "[request id: <id_unknown>] " if backend == TRITON else ""
    assert call(client, caller, "adder:FP32") == (
        0, f"{refused}{request_id}inference input 'INPUT' data-type is 'FP32', but model "
           "'adder' expects 'INT32'", INTERNAL)


def test_bls_outside_execute_raises(client):
    assert call(client, "caller", "initialize")[1] == (
        "TritonModelException: BLS is only supported during the 'execute' function.")


def test_a_bls_model_may_call_a_bls_model(client):
    assert call(client, "caller", "async_caller/adder", 1) == (6, "", -1)
    assert call(client, "async_caller", "caller/adder", -1) == (7, "", -1)


def _successes(client: grpcclient.InferenceServerClient, model: str) -> dict[str, tuple[int, int]]:
    """version -> (successful requests, inferences)."""
    return {s.version: (s.inference_stats.success.count, s.inference_count)
            for s in client.get_inference_statistics(model).model_stats}


def test_bls_calls_count_in_the_called_model_statistics(client):
    before = _successes(client, "adder")
    for caller in CALLERS:
        call(client, caller, "adder", 1)
        call(client, caller, "adder")
        call(client, caller, "adder", 2)
        call(client, caller, "adder", 3)  # not ready: never reaches a model
        call(client, caller, "adder:NOPE")  # refused before it is scheduled
    expected = {"1": (before["1"][0] + 2, before["1"][1] + 2),
                "2": (before["2"][0] + 4, before["2"][1] + 4)}
    # tritonserver counts a request once its response is sent: wait for the count.
    wait_for(lambda: _successes(client, "adder") == expected, 5, "BLS calls counted")


@pytest.mark.parametrize("caller", CALLERS)
def test_concurrent_calls_into_a_busy_model_all_complete(client, caller):
    """32 BLS calls at once, while the called model also serves 16 requests of its own."""
    def direct(x: int) -> int:
        tensor = grpcclient.InferInput("INPUT", [1, 1], "INT32")
        tensor.set_data_from_numpy(np.array([[x]], dtype=np.int32))
        return int(client.infer("adder", [tensor], model_version="1",
                                client_timeout=30).as_numpy("OUTPUT")[0, 0])

    with ThreadPoolExecutor(48) as pool:
        via_bls = [pool.submit(call, client, caller, "adder", 1 + i % 2, i) for i in range(32)]
        directly = [pool.submit(direct, 100 + i) for i in range(16)]
        assert [f.result() for f in via_bls] == [(i + 1 + i % 2, "", -1) for i in range(32)]
        assert [f.result() for f in directly] == [101 + i for i in range(16)]
