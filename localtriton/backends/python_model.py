"""Python-backend models: ``<version>/model.py`` defining ``TritonPythonModel``.

Triton runs each instance in its own stub process; here each instance is an object driven
by its own worker thread. ``execute`` receives every request of one execution at once, so a
model may process a dynamic batch in one go, exactly as under Triton.

As in Triton's stub, ``execute`` may be ``async def``: its coroutine runs on an event loop
of the instance's own (in its own thread, started on first use, kept until the model
closes) while the worker thread waits for the responses. During ``execute``, and in the
coroutines it starts, the model may call other models (BLS, see ``..bls``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

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


def instance_names(config: mc.ModelConfig) -> list[str]:
    """Triton's names of a model's instances: a group's name alone when it has one instance,
    else the group's name and the instance's index ("m_0", or "m_0_0", "m_0_1")."""
    return [group.name if group.count == 1 else f"{group.name}_{i}"
            for group in config.instance_group for i in range(group.count)]


def traceback_text(exc: BaseException) -> str:
    """Where ``exc`` was raised in the model's code, as Triton's stub words it (pybind11):
    from the frame that raised outwards, up to the model's ``execute``; the frames of
    whoever called ``execute`` (this module) are not the model's. The frames of a finished
    coroutine have no caller, so an ``async def execute`` shows its innermost frames only,
    as in Triton."""
    tb = exc.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    lines = []
    frame: FrameType | None = tb.tb_frame
    while frame is not None and frame.f_globals.get("__name__") != __name__:
        lines.append(f"  {frame.f_code.co_filename}({frame.f_lineno}): {frame.f_code.co_name}\n")
        frame = frame.f_back
    return "\n\nAt:\n" + "".join(lines) if lines else ""


class PythonBackend(Backend):
    def __init__(self, config: mc.ModelConfig, model_dir: Path, version: int,
                 executor: pb_utils.RequestExecutor | None = None) -> None:
        super().__init__(config)
        self._executor = executor
        # Each instance's event loop for an ``async def execute``, and its thread.
        self._loops: dict[int, tuple[asyncio.AbstractEventLoop, threading.Thread]] = {}
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
        self._names = instance_names(config)
        self._instances = []
        for instance_name in self._names:
            model = model_class()
            if hasattr(model, "initialize"):
                model.initialize({
                    "model_config": config_json,
                    "model_instance_kind": "CPU",
                    "model_instance_name": instance_name,
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
                r.request_id, r.parameters, model_name=self.config.name)
            for r in requests
        ]
        try:
            with self._bls():
                responses = self._instances[instance].execute(wrapped)
            if asyncio.iscoroutine(responses):
                responses = asyncio.run_coroutine_threadsafe(
                    self._with_bls(responses), self._loop(instance)).result()
        except Exception as exc:
            error = InferenceError.internal(
                f"Failed to process the request(s) for model '{self._names[instance]}', "
                f"message: {type(exc).__name__}: {exc}{traceback_text(exc)}")
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

    def _bls(self) -> contextlib.AbstractContextManager[None]:
        """Where the model's BLS calls go while it executes."""
        if self._executor is None:
            return contextlib.nullcontext()
        return pb_utils.bls_executor(self._executor)

    async def _with_bls(self, coroutine: Any) -> Any:
        with self._bls():  # a task's context is its own: set inside it
            return await coroutine

    def _loop(self, instance: int) -> asyncio.AbstractEventLoop:
        """The instance's event loop, started on first use (the scheduler never runs one
        instance twice at once, so no lock is needed)."""
        if instance not in self._loops:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, daemon=True,
                                      name=f"{self._names[instance]}-asyncio")
            thread.start()
            self._loops[instance] = (loop, thread)
        return self._loops[instance][0]

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
        try:
            for model in self._instances:
                if hasattr(model, "finalize"):
                    model.finalize()
        finally:
            for loop, thread in self._loops.values():
                loop.call_soon_threadsafe(loop.stop)
                thread.join(5)  # a coroutine stuck in a blocking call keeps its daemon thread
                if not thread.is_alive():
                    loop.close()
