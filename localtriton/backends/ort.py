"""ONNX models on onnxruntime's CPU provider, one session per model instance.

As Triton's onnxruntime backend does, requests in one execution are concatenated along the
batch dimension and the outputs are split back so that each caller gets exactly its rows.
Each session gets one intra-op thread by default (``intra_op_thread_count`` parameter, the
same key Triton's backend reads): parallelism comes from instances, not from threads that
would fight over a few cores.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tritonclient.grpc import model_config_pb2 as mc

from ..datatypes import CONFIG_TO_NUMPY
from ..errors import InferenceError, ModelConfigError
from ..model_config import string_parameter
from ..request import InferRequest
from .base import Backend, Execution

_ORT_TYPES = {
    "tensor(bool)": mc.TYPE_BOOL, "tensor(uint8)": mc.TYPE_UINT8,
    "tensor(uint16)": mc.TYPE_UINT16, "tensor(uint32)": mc.TYPE_UINT32,
    "tensor(uint64)": mc.TYPE_UINT64, "tensor(int8)": mc.TYPE_INT8,
    "tensor(int16)": mc.TYPE_INT16, "tensor(int32)": mc.TYPE_INT32,
    "tensor(int64)": mc.TYPE_INT64, "tensor(float16)": mc.TYPE_FP16,
    "tensor(float)": mc.TYPE_FP32, "tensor(double)": mc.TYPE_FP64,
    "tensor(string)": mc.TYPE_STRING,
}


class OnnxRuntimeBackend(Backend):
    def __init__(self, config: mc.ModelConfig, model_dir: Path, version: int) -> None:
        super().__init__(config)
        path = model_dir / str(version) / config.default_model_filename
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(string_parameter(config, "intra_op_thread_count", "1"))
        options.inter_op_num_threads = int(string_parameter(config, "inter_op_thread_count", "1"))
        options.log_severity_level = 3
        self._sessions = [
            ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for _ in range(self.instance_count)
        ]
        self._check_io(self._sessions[0])
        self._output_names = [t.name for t in config.output]
        self._output_dtypes = {t.name: CONFIG_TO_NUMPY[t.data_type] for t in config.output}

    def _check_io(self, session: ort.InferenceSession) -> None:
        name = self.config.name
        for kind, declared, actual in (
            ("input", self.config.input, session.get_inputs()),
            ("output", self.config.output, session.get_outputs()),
        ):
            by_name = {node.name: node for node in actual}
            for tensor in declared:
                node = by_name.get(tensor.name)
                if node is None:
                    raise ModelConfigError(
                        f"{name}: {kind} '{tensor.name}' is not in the ONNX model, which has "
                        f"{sorted(by_name)}")
                if _ORT_TYPES.get(node.type) != tensor.data_type:
                    raise ModelConfigError(
                        f"{name}: {kind} '{tensor.name}' is {node.type} in the ONNX model but "
                        f"{mc.DataType.Name(tensor.data_type)} in config.pbtxt")
                model_rank = len(node.shape) - (1 if self.config.max_batch_size > 0 else 0)
                if model_rank != len(tensor.dims):
                    raise ModelConfigError(
                        f"{name}: {kind} '{tensor.name}' has rank {len(tensor.dims)} in "
                        f"config.pbtxt but the ONNX model implies {model_rank}")

    def execute(self, instance: int, requests: list[InferRequest]) -> Execution:
        t0 = time.perf_counter_ns()
        if len(requests) == 1:
            feeds = requests[0].inputs
        else:
            feeds = {name: np.concatenate([r.inputs[name] for r in requests])
                     for name in requests[0].inputs}
        t1 = time.perf_counter_ns()
        try:
            outputs = self._sessions[instance].run(self._output_names, feeds)
        except Exception as exc:  # onnxruntime raises its own exception types
            error = InferenceError.internal(f"onnx runtime error: {exc}")
            return Execution([error] * len(requests), t1 - t0, time.perf_counter_ns() - t1)
        t2 = time.perf_counter_ns()
        results: list[dict[str, np.ndarray] | InferenceError] = []
        if self.config.max_batch_size > 0:
            offset = 0
            for request in requests:
                end = offset + request.batch_size
                results.append({n: o[offset:end]
                                for n, o in zip(self._output_names, outputs, strict=True)})
                offset = end
        else:
            results.append(dict(zip(self._output_names, outputs, strict=True)))
        t3 = time.perf_counter_ns()
        return Execution(results, t1 - t0, t2 - t1, t3 - t2)
