"""Business logic scripting (BLS): Python models calling other models of their server.

A call goes the way a ModelInfer for the same model and version goes: the repository's
lookup (version -1: the version policy's choice), the model's checks, its scheduler (calls
from concurrent executions are dynamically batched together, and with gRPC requests) and its
statistics, as in Triton, where a BLS call is counted in the called model's statistics.

The call runs on the server's event loop. The caller waits in its instance's worker thread
(``exec``) or on its own event loop (``async_exec``), never on the server's loop, so a call
into a busy model waits its turn like any request and cannot stall the server. Only a cycle
of calls with no free instance left waits forever, as it does in Triton.

Errors come back as responses, never as exceptions, in python_backend 24.10's words (probed
against tritonserver 2.51): a model or version that is not ready (unknown, not loaded, not in
the version policy) and a request refused before it is scheduled are prefixed "Model <name>
- Error when running inference: "; a failure of the called model keeps its own words. The
error code is always INTERNAL, as the stub reports every BLS error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import TYPE_CHECKING

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from . import triton_python_backend_utils as pb_utils
from .errors import InferenceError
from .request import InferRequest
from .tensors import deserialize_bytes, serialize_bytes

if TYPE_CHECKING:
    from .repository import Model, ModelRepository

log = logging.getLogger(__name__)


def _bytes_elements(array: np.ndarray, name: str) -> np.ndarray:
    """A BYTES tensor as Triton's Python backend hands it over, an object array of bytes
    (str elements UTF-8 encoded), whichever numpy form the other side built it in."""
    if array.dtype.kind == "O" and all(isinstance(x, bytes) for x in array.flat):
        return array
    return deserialize_bytes(serialize_bytes(array), array.size, name).reshape(array.shape)


def _failed(message: str) -> pb_utils.InferenceResponse:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))


class RequestExecutor:
    """The BLS side of one server (``pb_utils.RequestExecutor``), for its Python models."""

    def __init__(self, repository: ModelRepository, loop: asyncio.AbstractEventLoop) -> None:
        self._repository = repository
        self._loop = loop

    def submit(self, model_name: str, model_version: int, inputs: list[pb_utils.Tensor],
               requested_output_names: list[str], request_id: str,
               parameters: dict[str, bool | int | str]
               ) -> concurrent.futures.Future[pb_utils.InferenceResponse]:
        """Start the call on the server's loop; called from a model's thread."""
        return asyncio.run_coroutine_threadsafe(
            self._infer(model_name, model_version, inputs, requested_output_names,
                        request_id, parameters), self._loop)

    async def _infer(self, model_name: str, model_version: int,
                     inputs: list[pb_utils.Tensor], requested_output_names: list[str],
                     request_id: str, parameters: dict[str, bool | int | str]
                     ) -> pb_utils.InferenceResponse:
        refused = f"Model {model_name} - Error when running inference: "
        try:
            model = self._repository.get(model_name,
                                         "" if model_version == -1 else str(model_version))
        except InferenceError:
            return _failed(f"{refused}Failed for execute the inference request. "
                           f"Model '{model_name}' is not ready.")
        request = InferRequest(
            model.name, {t.name(): self._input(model, t) for t in inputs},
            tuple(requested_output_names), request_id=request_id, parameters=dict(parameters))
        try:
            model.admit(request)
        except InferenceError as exc:
            return _failed(refused + exc.message)
        try:
            outputs = await model.run(request)
        except InferenceError as exc:
            return _failed(exc.message)
        except Exception as exc:  # a localtriton bug: the caller gets an error, not a hang
            log.exception("BLS call of %s failed", model_name)
            return _failed(f"{type(exc).__name__}: {exc}")
        return pb_utils.InferenceResponse([
            pb_utils.Tensor(name, self._output(model, name, array))
            for name, array in outputs.items()])

    @staticmethod
    def _input(model: Model, tensor: pb_utils.Tensor) -> np.ndarray:
        array = tensor.as_numpy()
        declared = model.inputs.get(tensor.name())
        if declared is not None and declared.data_type == mc.TYPE_STRING \
                and array.dtype.kind in "OSU":
            return _bytes_elements(array, tensor.name())
        return array

    @staticmethod
    def _output(model: Model, name: str, array: np.ndarray) -> np.ndarray:
        if model.outputs[name].data_type == mc.TYPE_STRING:
            return _bytes_elements(array, name)
        return array
