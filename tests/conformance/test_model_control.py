"""Triton's explicit model control (``--model-control-mode explicit``, ``--load-model``,
RepositoryIndex / RepositoryModelLoad / RepositoryModelUnload), on localtriton and on the
genuine tritonserver alike: which models load at start, how each model's state shows in the
index, what a request for a model that is not loaded gets, and that an unload lets the
requests in flight finish. Every answer here was first taken from tritonserver 2.51.

One server per backend for the module, over a small repository of light python models
(``null_detector`` copies, an ensemble over one of them, one slow, one that cannot load).
The tests run in file order and each uses its own models, so that the start-up state is
checked before anything loads; the model that fails to load goes last, because with
tritonserver's --strict-readiness (default) a failed model makes the server not ready.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from detect_stack.servers import LOCALTRITON, null_models, triton_server, wait_for

# Triton's words, as pinned against tritonserver 2.51.
NOT_EXPLICIT = "explicit model load / unload is not allowed if polling is enabled"


def not_found(name: str) -> str:
    return f"Request for unknown model: '{name}' is not found"


def no_versions(name: str) -> str:
    return f"Request for unknown model: '{name}' has no available versions"


ENSEMBLE = '''
name: "ens"
platform: "ensemble"
max_batch_size: 8
input [ { name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "num_detections" data_type: TYPE_INT32 dims: [ 1 ] } ]
ensemble_scheduling { step [ {
  model_name: "null_c"
  model_version: -1
  input_map { key: "IMAGE" value: "IMAGE" }
  output_map { key: "num_detections" value: "num_detections" }
} ] }
'''

# One row in, one count out; ``slow`` marks that a request reached it, then takes a while.
TINY_CONFIG = '''
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {{ name: "num_detections" data_type: TYPE_INT32 dims: [ 1 ] }} ]
'''
SLOW_SECONDS = 2.0
SLOW_MODEL = f'''
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.started = Path(args["model_repository"]) / "started"

    def execute(self, requests):
        self.started.touch()
        time.sleep({SLOW_SECONDS})
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "num_detections", np.ones((1, 1), dtype=np.int32))]) for _ in requests]
'''
BOOM_MODEL = '''
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("kaput")

    def execute(self, requests):
        return []
'''


def tiny_model(repository: Path, name: str, code: str) -> Path:
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(TINY_CONFIG.format(name=name))
    (repository / name / "1" / "model.py").write_text(textwrap.dedent(code))
    return repository / name


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = null_models(tmp_path_factory.mktemp("control") / "repository",
                             ["null_a", "null_b", "null_c"])
    (repository / "ens" / "1").mkdir(parents=True)
    (repository / "ens" / "config.pbtxt").write_text(ENSEMBLE)
    tiny_model(repository, "slow", SLOW_MODEL)
    tiny_model(repository, "boom", BOOM_MODEL)
    # A config both servers refuse to read: a preferred batch size over max_batch_size.
    shutil.copytree(repository / "null_a", repository / "bad")
    config = repository / "bad" / "config.pbtxt"
    text = config.read_text()
    assert 'name: "null_a"' in text and "dynamic_batching { }" in text
    config.write_text(text.replace('name: "null_a"', 'name: "bad"').replace(
        "dynamic_batching { }", "dynamic_batching { preferred_batch_size: [ 128 ] }"))
    return repository


@pytest.fixture(scope="module")
def stub(backend: str, repository: Path, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    """A server of ``backend`` in explicit mode that loaded ``null_a`` at start."""
    tmp = tmp_path_factory.mktemp(f"control-{backend}")
    with (triton_server(backend, tmp, "--model-control-mode", "explicit",
                        "--load-model", "null_a", repository=repository) as (url, _),
          grpc.insecure_channel(url) as channel):
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def infer(stub, model: str, version: str = "") -> pb.ModelInferResponse:
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    tensor = request.inputs.add(name="IMAGE", datatype="BYTES", shape=[1, 1])
    tensor.contents.bytes_contents.append(b"a null detector never decodes it")
    return stub.ModelInfer(request, timeout=30)


def error(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """The status code and message ``call`` fails with."""
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def index(stub, ready: bool = False) -> dict[str, list[tuple[str, str, str]]]:
    """name -> (version, state, reason) per entry; a never-loaded model: one empty entry."""
    response = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=ready), timeout=10)
    out: dict[str, list[tuple[str, str, str]]] = {}
    for model in response.models:
        out.setdefault(model.name, []).append((model.version, model.state, model.reason))
    return out


def load(stub, name: str) -> None:
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=name), timeout=60)


def unload(stub, name: str, dependents: bool | None = None) -> None:
    request = pb.RepositoryModelUnloadRequest(model_name=name)
    if dependents is not None:
        request.parameters["unload_dependents"].bool_param = dependents
    stub.RepositoryModelUnload(request, timeout=10)


def config(stub, name: str) -> pb.ModelConfigResponse:
    return stub.ModelConfig(pb.ModelConfigRequest(name=name), timeout=10)


def metadata(stub, name: str) -> pb.ModelMetadataResponse:
    return stub.ModelMetadata(pb.ModelMetadataRequest(name=name), timeout=10)


def statistics(stub, name: str = "") -> list[pb.ModelStatistics]:
    return list(stub.ModelStatistics(pb.ModelStatisticsRequest(name=name),
                                     timeout=10).model_stats)


def assert_successes(stub, name: str, count: int) -> None:
    """tritonserver counts a request after its response is sent: wait for the count."""
    def counted() -> bool:
        [stats] = statistics(stub, name)
        return stats.inference_stats.success.count == count
    wait_for(counted, 5, f"{count} successful request(s) of {name} counted")


def server_ready(stub) -> bool:
    return stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready


def model_ready(stub, name: str, version: str = "") -> bool:
    return stub.ModelReady(pb.ModelReadyRequest(name=name, version=version), timeout=10).ready


READY = [("1", "READY", "")]
UNLOADED = [("1", "UNAVAILABLE", "unloaded")]
NEVER_LOADED = [("", "", "")]


def wait_unloaded(stub, *names: str) -> None:
    """tritonserver's unload closes the model after the RPC returns (UNLOADING until then;
    a python model's stub takes about a second to stop)."""
    wait_for(lambda: all(index(stub).get(n) == UNLOADED for n in names), 20,
             f"{names} unloaded")


def test_explicit_start_loads_only_the_named_models(stub):
    assert index(stub) == {
        "bad": NEVER_LOADED, "boom": NEVER_LOADED, "ens": NEVER_LOADED, "null_a": READY,
        "null_b": NEVER_LOADED, "null_c": NEVER_LOADED, "slow": NEVER_LOADED}
    assert index(stub, ready=True) == {"null_a": READY}
    assert server_ready(stub)
    assert infer(stub, "null_a").model_name == "null_a"
    meta = stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10)
    assert {"model_repository", "model_repository(unload_dependents)"} <= set(meta.extensions)


def test_a_model_in_the_repository_loads_on_request(stub):
    # Never loaded: as unknown as a name that is not in the repository at all.
    assert error(lambda: infer(stub, "null_b")) == (
        grpc.StatusCode.NOT_FOUND, not_found("null_b"))
    assert error(lambda: config(stub, "null_b")) == (
        grpc.StatusCode.NOT_FOUND, not_found("null_b"))
    assert error(lambda: statistics(stub, "null_b")) == (
        grpc.StatusCode.INVALID_ARGUMENT, "requested model 'null_b' is not available")
    assert not model_ready(stub, "null_b")

    load(stub, "null_b")  # returns once the model is READY
    assert index(stub)["null_b"] == READY
    assert model_ready(stub, "null_b")
    assert infer(stub, "null_b").model_name == "null_b"
    assert_successes(stub, "null_b", 1)
    load(stub, "null_b")  # loading a loaded, unchanged model is no error
    assert index(stub)["null_b"] == READY


def test_an_unloaded_model_has_no_available_versions_until_loaded_again(stub):
    unload(stub, "null_a")
    # Refused at once, whether or not the unload has finished.
    assert error(lambda: infer(stub, "null_a")) == (
        grpc.StatusCode.NOT_FOUND, no_versions("null_a"))
    wait_unloaded(stub, "null_a")
    assert "null_a" not in index(stub, ready=True)
    assert error(lambda: metadata(stub, "null_a")) == (
        grpc.StatusCode.NOT_FOUND, no_versions("null_a"))
    assert error(lambda: infer(stub, "null_a", "1")) == (
        grpc.StatusCode.UNAVAILABLE,
        "Request for unknown model: 'null_a' version 1 is not at ready state")
    assert error(lambda: statistics(stub, "null_a")) == (
        grpc.StatusCode.INVALID_ARGUMENT, "requested model 'null_a' is not available")
    assert not model_ready(stub, "null_a")
    assert "null_a" not in {s.name for s in statistics(stub)}

    load(stub, "null_a")
    assert index(stub)["null_a"] == READY
    assert infer(stub, "null_a").model_version == "1"
    # A loaded model's statistics start again from zero.
    assert_successes(stub, "null_a", 1)


def test_unknown_names(stub):
    unload(stub, "no_such_model")  # nothing to unload is no error
    assert error(lambda: load(stub, "no_such_model")) == (
        grpc.StatusCode.INTERNAL,
        "failed to load 'no_such_model', failed to poll from model repository")
    assert "no_such_model" not in index(stub)


def test_an_ensemble_comes_and_goes_with_its_steps(stub):
    load(stub, "ens")  # loads its composing model too
    assert (index(stub)["ens"], index(stub)["null_c"]) == (READY, READY)
    assert infer(stub, "ens").model_name == "ens"

    # An ensemble cannot run without its steps: unloading one unloads the ensemble too.
    unload(stub, "null_c")
    wait_unloaded(stub, "ens", "null_c")
    assert error(lambda: infer(stub, "ens")) == (grpc.StatusCode.NOT_FOUND, no_versions("ens"))

    # By default unloading an ensemble leaves its composing models loaded...
    load(stub, "ens")
    unload(stub, "ens")
    wait_unloaded(stub, "ens")
    assert index(stub)["null_c"] == READY
    assert infer(stub, "null_c").model_name == "null_c"

    # ... and with unload_dependents they go too.
    load(stub, "ens")
    unload(stub, "ens", dependents=True)
    wait_unloaded(stub, "ens", "null_c")


def test_requests_in_flight_finish_when_their_model_is_unloaded(stub, repository):
    load(stub, "slow")
    started = repository / "slow" / "started"
    started.unlink(missing_ok=True)
    responses: list[pb.ModelInferResponse] = []
    errors: list[grpc.RpcError] = []

    def call() -> None:
        try:
            responses.append(infer(stub, "slow"))
        except grpc.RpcError as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    wait_for(started.exists, 20, "the request reached the model")
    begun = time.monotonic()
    unload(stub, "slow")
    assert time.monotonic() - begun < SLOW_SECONDS / 2  # it does not wait for the request
    assert error(lambda: infer(stub, "slow")) == (
        grpc.StatusCode.NOT_FOUND, no_versions("slow"))
    assert index(stub)["slow"] == [("1", "UNLOADING", "")]
    caller.join(30)
    assert not errors and [r.model_name for r in responses] == ["slow"], errors
    wait_unloaded(stub, "slow")


def test_a_model_that_fails_to_load(stub):
    """Last: with --strict-readiness (the default) a failed model makes the server not ready."""
    # A config that cannot be read: the model stays as it was (name only).
    assert error(lambda: load(stub, "bad")) == (
        grpc.StatusCode.INTERNAL, "failed to load 'bad', failed to poll from model repository")
    assert index(stub)["bad"] == NEVER_LOADED
    # A model whose initialization fails: UNAVAILABLE with the reason.
    code, message = error(lambda: load(stub, "boom"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("load failed for model 'boom': version 1 is at UNAVAILABLE "
                              "state: ") and "RuntimeError: kaput" in message
    [(version, state, reason)] = index(stub)["boom"]
    assert (version, state) == ("1", "UNAVAILABLE") and "RuntimeError: kaput" in reason
    assert error(lambda: infer(stub, "boom")) == (
        grpc.StatusCode.NOT_FOUND, no_versions("boom"))
    assert not server_ready(stub)
    assert infer(stub, "null_b").model_name == "null_b"  # the others serve on


def test_without_explicit_model_control_load_and_unload_are_refused(triton_url):
    """The session's server runs in tritonserver's default mode, none: every model loaded."""
    with grpc.insecure_channel(triton_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        refused = (grpc.StatusCode.UNAVAILABLE, NOT_EXPLICIT)
        assert error(lambda: load(stub, "null_detector")) == refused
        assert error(lambda: unload(stub, "null_detector")) == refused
        assert index(stub)["null_detector"] == READY


@pytest.mark.parametrize("flags, message", [
    (("--load-model", "null_a"),
     "Use of '--load-model' requires setting '--model-control-mode=explicit' as well."),
    (("--model-control-mode", "explicit", "--load-model", "*", "--load-model", "null_a"),
     "Wildcard model name '*' must be the ONLY startup model if specified at all."),
    (("--model-control-mode", "explicit", "--load-model", "no_such_model"), None),
], ids=["load-model-without-explicit", "wildcard-and-another", "unknown-model"])
def test_start_refuses_model_control_flags_as_triton_does(backend, repository, flags, message):
    module = "detect_localtriton" if backend == LOCALTRITON else "detect_localtriton.tritonserver"
    proc = subprocess.run([sys.executable, "-m", module, "--model-repository", str(repository),
                           "--grpc-port", "0", *flags],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    if message:
        assert message in output
    elif backend == LOCALTRITON:
        assert "failed to load 'no_such_model'" in output
    else:
        assert "failed to load all models" in output


def test_localtriton_refuses_poll_mode(repository):
    """tritonserver polls the repository for changes; localtriton does not, and says so."""
    proc = subprocess.run([sys.executable, "-m", "detect_localtriton", "--model-repository",
                           str(repository), "--model-control-mode", "poll"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--model-control-mode poll is not supported" in proc.stderr
