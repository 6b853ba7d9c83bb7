"""The subset of Triton's ``triton_python_backend_utils`` that ordinary ``model.py`` files use.

A model written against this module runs unchanged in Triton's Python backend, where the
real module of the same name is provided by the stub process. Only non-decoupled models and
CPU tensors are supported.

Business logic scripting (BLS): ``InferenceRequest(model_name=..., ...).exec()`` (or
``await ....async_exec()`` in an ``async def execute``) runs a request on another model of
the server that hosts the calling model, with python_backend 24.10's semantics: the same
keyword names and defaults, an error *response* (never an exception) when the model or
version is not ready or the call fails, and TritonModelException outside ``execute``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import json
import logging
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

from .tensors import deserialize_bytes, serialize_bytes

_log = logging.getLogger(__name__)

_NUMPY_BY_CONFIG_TYPE: dict[str, Any] = {
    "TYPE_BOOL": np.bool_,
    "TYPE_UINT8": np.uint8, "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32, "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8, "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32, "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16, "TYPE_FP32": np.float32, "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}


class TritonModelException(Exception):
    """Raised by the runtime for misuse of this API, as in Triton."""


class TritonError:
    """An error attached to one response; its code becomes the request's gRPC status."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        self._message = message
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        if not isinstance(array, np.ndarray):
            raise TritonModelException(f"tensor '{name}' must be a numpy array")
        self._name = name
        self._array = array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def is_cpu(self) -> bool:
        return True

    def shape(self) -> list[int]:
        return list(self._array.shape)


class PreferredMemory:
    """Where a BLS call's outputs should be placed. localtriton has CPU tensors only, so it
    is accepted and has no effect."""

    def __init__(self, preferred_memory_type: int, preferred_device_id: int = 0) -> None:
        self._type = preferred_memory_type
        self._device_id = preferred_device_id


# Triton's MemoryType values.
TRITONSERVER_MEMORY_GPU = 0
TRITONSERVER_MEMORY_CPU = 1


class InferenceTrace:
    """A request's trace; localtriton does not trace, so there is never a context."""

    def get_context(self) -> str | None:
        return None


class RequestExecutor(Protocol):
    """The server that hosts the model whose ``execute`` is running: where its BLS calls go.
    Set by localtriton around each ``execute`` (see ``bls_executor``), never by models."""

    def submit(self, model_name: str, model_version: int, inputs: list[Tensor],
               requested_output_names: list[str], request_id: str,
               parameters: dict[str, bool | int | str]
               ) -> concurrent.futures.Future[InferenceResponse]: ...


# A context variable rather than a global: one process may host several servers (tests), and
# the coroutines of an ``async def execute`` (and the tasks they start) inherit it.
_executor: contextvars.ContextVar[RequestExecutor | None] = contextvars.ContextVar(
    "triton_python_backend_utils_executor", default=None)


@contextlib.contextmanager
def bls_executor(executor: RequestExecutor) -> Iterator[None]:
    """Let the code run in this block make BLS calls on ``executor`` (localtriton only)."""
    token = _executor.set(executor)
    try:
        yield
    finally:
        _executor.reset(token)


class InferenceRequest:
    """A request: one that ``execute`` receives, or one a model builds to call another model
    (BLS). The constructor takes Triton's arguments, in Triton's order:
    ``InferenceRequest(request_id="", correlation_id=0, inputs, requested_output_names,
    model_name, model_version=-1, flags=0, timeout=0, preferred_memory=..., trace=...,
    parameters=None)``; ``inputs``, ``requested_output_names`` and ``model_name`` are required.

    ``model_version`` -1 lets the server choose by the model's version policy (the highest
    loaded version). ``flags`` (sequence start/end), ``timeout`` (only honoured under a
    queue policy, which localtriton does not have), ``preferred_memory`` and ``trace`` are
    accepted but change nothing here.

    A positional call whose first argument is a list is the form this module had before BLS,
    ``(inputs, requested_output_names, request_id, parameters, correlation_id)``, kept for
    code that builds the requests of an ``execute`` call itself.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args and isinstance(args[0], list):
            self._received(*args, **kwargs)
        else:
            self._built(*args, **kwargs)

    def _received(self, inputs: list[Tensor], requested_output_names: list[str],
                  request_id: str = "", parameters: dict[str, Any] | None = None,
                  correlation_id: int | str = 0, model_name: str = "") -> None:
        self._inputs = inputs
        self._requested = requested_output_names
        self._id = request_id
        self._parameters = parameters or {}
        self._correlation_id = correlation_id
        self._model_name = model_name
        self._model_version = -1
        self._flags = 0
        self._timeout = 0

    def _built(self, request_id: str = "", correlation_id: int | str = 0,
               inputs: list[Tensor] | None = None,
               requested_output_names: list[str] | None = None,
               model_name: str | None = None, model_version: int = -1, flags: int = 0,
               timeout: int = 0, preferred_memory: PreferredMemory | None = None,
               trace: InferenceTrace | None = None,
               parameters: dict[str, Any] | None = None) -> None:
        if inputs is None or requested_output_names is None or model_name is None:
            raise TypeError("InferenceRequest() requires inputs, requested_output_names and "
                            "model_name")
        parameters = parameters or {}
        for key, value in parameters.items():  # Triton's checks, with its words
            if not isinstance(key, str):
                raise TritonModelException(
                    f"Expect parameters keys to have type str, found type {type(key)}")
            if not isinstance(value, bool | int | str):
                raise TritonModelException(
                    "Expect parameters values to have type bool/int/str, found type "
                    f"{type(value)}")
        if not isinstance(correlation_id, int | str):
            raise TritonModelException("Correlation ID must be integer or string")
        self._received(list(inputs), list(requested_output_names), request_id, parameters,
                       correlation_id, model_name)
        self._model_version = model_version
        self._flags = flags
        self._timeout = timeout

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def requested_output_names(self) -> list[str]:
        return self._requested

    def request_id(self) -> str:
        return self._id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def set_flags(self, flags: int) -> None:
        self._flags = flags

    def timeout(self) -> int:
        return self._timeout

    def parameters(self) -> str:
        return json.dumps(self._parameters)

    def trace(self) -> InferenceTrace:
        return InferenceTrace()

    def is_cancelled(self) -> bool:
        return False

    def exec(self, decoupled: bool = False) -> InferenceResponse:
        """Run this request on its model and wait for the response (BLS). Blocks the calling
        instance only: the server goes on serving, the called model included."""
        return self._submit(decoupled).result()

    def async_exec(self, decoupled: bool = False) -> asyncio.Future[InferenceResponse]:
        """``exec`` as an awaitable, for ``async def execute``: several calls may be in
        flight at once (and the called model may batch them)."""
        return asyncio.wrap_future(self._submit(decoupled), loop=asyncio.get_running_loop())

    def _submit(self, decoupled: bool) -> concurrent.futures.Future[InferenceResponse]:
        executor = _executor.get()
        if executor is None:
            raise TritonModelException("BLS is only supported during the 'execute' function.")
        if decoupled:
            raise TritonModelException(
                "localtriton does not support decoupled models: BLS calls take "
                "decoupled=False")
        return executor.submit(self._model_name, self._model_version, self._inputs,
                               self._requested, self._id, self._parameters)


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor] | None = None,
                 error: TritonError | None = None) -> None:
        self._outputs = list(output_tensors or [])
        self._error = error

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


class Logger:
    @staticmethod
    def log_info(message: str) -> None:
        _log.info(message)

    @staticmethod
    def log_warn(message: str) -> None:
        _log.warning(message)

    @staticmethod
    def log_error(message: str) -> None:
        _log.error(message)

    @staticmethod
    def log_verbose(message: str) -> None:
        _log.debug(message)


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    for tensor in request.inputs():
        if tensor.name() == name:
            return tensor
    return None


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    for tensor in response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None


def get_input_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    for tensor in model_config.get("input", []):
        if tensor["name"] == name:
            return tensor
    return None


def get_output_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    for tensor in model_config.get("output", []):
        if tensor["name"] == name:
            return tensor
    return None


def triton_string_to_numpy(triton_type_string: str) -> Any:
    return _NUMPY_BY_CONFIG_TYPE[triton_type_string]


def serialize_byte_tensor(array: np.ndarray) -> np.ndarray:
    return np.frombuffer(serialize_bytes(array), dtype=np.uint8)


def deserialize_bytes_tensor(encoded: bytes) -> np.ndarray:
    data = bytes(encoded)
    count, offset = 0, 0
    while offset + 4 <= len(data):
        offset += 4 + int.from_bytes(data[offset:offset + 4], "little")
        count += 1
    return deserialize_bytes(data, count, "tensor")
