"""The subset of Triton's ``triton_python_backend_utils`` that ordinary ``model.py`` files use.

A model written against this module runs unchanged in Triton's Python backend, where the
real module of the same name is provided by the stub process. Only non-decoupled models and
CPU tensors are supported; business logic scripting (BLS) is not.
"""

from __future__ import annotations

import json
import logging
from typing import Any

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


class InferenceRequest:
    """A request as ``execute`` sees it. Built by localtriton, not by models."""

    def __init__(self, inputs: list[Tensor], requested_output_names: list[str],
                 request_id: str = "", parameters: dict[str, Any] | None = None,
                 correlation_id: int = 0) -> None:
        self._inputs = inputs
        self._requested = requested_output_names
        self._id = request_id
        self._parameters = parameters or {}
        self._correlation_id = correlation_id

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def requested_output_names(self) -> list[str]:
        return self._requested

    def request_id(self) -> str:
        return self._id

    def correlation_id(self) -> int:
        return self._correlation_id

    def parameters(self) -> str:
        return json.dumps(self._parameters)

    def is_cancelled(self) -> bool:
        return False


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
