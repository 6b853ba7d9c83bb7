"""Backends execute a list of requests on one model instance, as Triton backends do."""

from __future__ import annotations

from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from ..model_config import backend_of
from ..triton_python_backend_utils import RequestExecutor
from .base import Backend, Execution


def create_backend(config: mc.ModelConfig, model_dir: Path, version: int,
                   executor: RequestExecutor | None = None) -> Backend:
    """``executor``: where the BLS calls of a Python model go (without one they raise)."""
    kind = backend_of(config)
    if kind == "onnxruntime":
        from .ort import OnnxRuntimeBackend
        return OnnxRuntimeBackend(config, model_dir, version)
    if kind == "python":
        from .python_model import PythonBackend
        return PythonBackend(config, model_dir, version, executor)
    raise ValueError(f"no backend for '{kind}'")


__all__ = ["Backend", "Execution", "create_backend"]
