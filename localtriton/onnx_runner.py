"""Runs an ONNX model in Triton's Python backend, for Triton builds without onnxruntime's.

The CPU build of tritonserver this project installs (``make triton``) ships only the Python
backend. ``detect_localtriton.cpu_repository`` copies this file in as ``model.py`` of every model
that production serves with the onnxruntime backend, beside a link to the same
``model.onnx``, and keeps the model's configuration: tensors, ``max_batch_size``, dynamic
batching, instance groups and parameters. Like Triton's onnxruntime backend, it
concatenates the requests of one execution along the batch dimension and splits the
outputs back, and reads ``intra_op_thread_count`` / ``inter_op_thread_count``.

It runs inside Triton's Python backend stub (numpy < 2, onnxruntime), not in the project.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

MODEL_FILE_PARAMETER = "onnx_model_filename"


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"],
                            params.get(MODEL_FILE_PARAMETER, "model.onnx"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_thread_count", "1"))
        options.inter_op_num_threads = int(params.get("inter_op_thread_count", "1"))
        options.log_severity_level = 3
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.batching = config.get("max_batch_size", 0) > 0
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"]))
                        for t in config["output"]]

    def execute(self, requests):
        arrays = [[pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.inputs]
                  for r in requests]
        if self.batching and len(requests) > 1 and _same_row_shapes(arrays):
            groups = [list(range(len(requests)))]
        else:
            groups = [[i] for i in range(len(requests))]
        responses = [None] * len(requests)
        for group in groups:
            feeds = {name: np.concatenate([arrays[i][k] for i in group])
                     for k, name in enumerate(self.inputs)}
            try:
                results = self.session.run([name for name, _ in self.outputs], feeds)
            except Exception as exc:  # onnxruntime's errors say which tensor is wrong
                error = pb_utils.TritonError(f"onnxruntime: {exc}")
                for i in group:
                    responses[i] = pb_utils.InferenceResponse(error=error)
                continue
            start = 0
            for i in group:
                rows = arrays[i][0].shape[0] if self.batching else None
                part = slice(start, start + rows) if rows is not None else slice(None)
                responses[i] = pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor(name, np.ascontiguousarray(value[part], dtype=dtype))
                    for (name, dtype), value in zip(self.outputs, results, strict=True)])
                start += rows or 0
        return responses


def _same_row_shapes(arrays):
    """Requests can share one run only when every input has the same shape past the batch dim."""
    first = arrays[0]
    return all(a.shape[1:] == f.shape[1:]
               for other in arrays[1:] for a, f in zip(other, first, strict=True))
