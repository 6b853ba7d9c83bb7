"""Python-backend models: ``<version>/model.py`` defining ``TritonPythonModel``.

Triton runs each instance in its own stub process; here each instance is an object driven
by its own worker thread. ``execute`` receives every request of one execution at once, so a
model may process a dynamic batch in one go, exactly as under Triton.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc

from .. import triton_python_backend_utils as pb_utils
from ..datatypes import CONFIG_TO_NUMPY, wire_name
from ..errors import InferenceError, ModelConfigError
from ..request import InferRequest
from .base import Backend, Execution

_GRPC_CODES = {
    pb_utils.TritonError.UNKNOWN: grpc.StatusCode.UNKNOWN,
    pb_utils.TritonError.INTERNAL: grpc.StatusCode.INTERNAL,
    pb_utils.TritonError.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    pb_utils.TritonError.INVALID_ARG: grpc.StatusCode.INVALID_ARGUMENT,
    pb_utils.TritonError.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    pb_utils.TritonError.UNSUPPORTED: grpc.StatusCode.UNIMPLEMENTED,
    pb_utils.TritonError.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    pb_utils.TritonError.CANCELLED: grpc.StatusCode.CANCELLED,
}


def config_as_json(config: mc.ModelConfig) -> str:
    """The model_config JSON a Python model receives in ``initialize``, in Triton's shape
    (proto field names; int64 values as numbers rather than proto3-JSON strings)."""
    as_dict = json_format.MessageToDict(config, preserving_proto_field_name=True)

    def numbers(value):
        if isinstance(value, dict):
            return {k: numbers(v) for k, v in value.items()}
        if isinstance(value, list):
            return [numbers(v) for v in value]
        if isinstance(value, str) and value.lstrip("-").isdigit():
            return int(value)
        return value

    for key in ("input", "output"):
        for tensor in as_dict.get(key, []):
            if "dims" in tensor:
                tensor["dims"] = numbers(tensor["dims"])
    return json.dumps(as_dict)


class PythonBackend(Backend):
    def __init__(self, config: mc.ModelConfig, model_dir: Path, version: int) -> None:
        super().__init__(config)
        sys.modules.setdefault("triton_python_backend_utils", pb_utils)
        path = model_dir / str(version) / config.default_model_filename
        module_name = f"localtriton_models.{config.name}.v{version}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ModelConfigError(f"{config.name}: cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        model_class = getattr(module, "TritonPythonModel", None)
        if model_class is None:
            raise ModelConfigError(f"{config.name}: {path} defines no TritonPythonModel")
        config_json = config_as_json(config)
        self._outputs = {t.name: t for t in config.output}
        self._instances = []
        for group in config.instance_group:
            for i in range(group.count):
                model = model_class()
                if hasattr(model, "initialize"):
                    model.initialize({
                        "model_config": config_json,
                        "model_instance_kind": "CPU",
                        "model_instance_name": f"{group.name}_{i}",
                        "model_instance_device_id": "0",
                        "model_repository": str(model_dir),
                        "model_version": str(version),
                        "model_name": config.name,
                    })
                self._instances.append(model)
        self.instance_count = len(self._instances)

    def execute(self, instance: int, requests: list[InferRequest]) -> Execution:
        t0 = time.perf_counter_ns()
        wrapped = [
            pb_utils.InferenceRequest(
                [pb_utils.Tensor(n, a) for n, a in r.inputs.items()],
                list(r.requested_outputs) or list(self._outputs),
                r.request_id, r.parameters)
            for r in requests
        ]
        try:
            responses = self._instances[instance].execute(wrapped)
        except Exception as exc:
            error = InferenceError.internal(
                f"Failed to process the request(s) for model '{self.config.name}', "
                f"message: {type(exc).__name__}: {exc}")
            return Execution([error] * len(requests), 0, time.perf_counter_ns() - t0)
        t1 = time.perf_counter_ns()
        if not isinstance(responses, list) or len(responses) != len(requests):
            got = len(responses) if isinstance(responses, list) else type(responses).__name__
            error = InferenceError.internal(
                f"model '{self.config.name}' returned {got} "
                f"responses for {len(requests)} requests")
            return Execution([error] * len(requests), 0, t1 - t0)
        results = [self._convert(r, req) for r, req in zip(responses, requests, strict=True)]
        return Execution(results, 0, t1 - t0, time.perf_counter_ns() - t1)

    def _convert(self, response: pb_utils.InferenceResponse,
                 request: InferRequest) -> dict[str, np.ndarray] | InferenceError:
        if not isinstance(response, pb_utils.InferenceResponse):
            return InferenceError.internal(
                f"model '{self.config.name}' returned {type(response).__name__}, "
                "not an InferenceResponse")
        err = response.error()
        if err is not None:
            return InferenceError(_GRPC_CODES.get(err.code(), grpc.StatusCode.INTERNAL),
                                  err.message())
        out: dict[str, np.ndarray] = {}
        for tensor in response.output_tensors():
            declared = self._outputs.get(tensor.name())
            if declared is None:
                return InferenceError.internal(
                    f"model '{self.config.name}' produced undeclared output '{tensor.name()}'")
            array = tensor.as_numpy()
            want = CONFIG_TO_NUMPY[declared.data_type]
            if want == np.object_:
                ok = array.dtype.kind in ("O", "S", "U")
            else:
                ok = array.dtype == want
            if not ok:
                return InferenceError.internal(
                    f"output '{tensor.name()}' of model '{self.config.name}' has dtype "
                    f"{array.dtype} but the config declares {wire_name(declared.data_type)}")
            out[tensor.name()] = array
        return out

    def close(self) -> None:
        for model in self._instances:
            if hasattr(model, "finalize"):
                model.finalize()
