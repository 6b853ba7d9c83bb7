"""The loaded model repository: every model version, its scheduler and its statistics."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from . import model_config
from .backends import create_backend
from .datatypes import CONFIG_TO_NUMPY, wire_name
from .ensemble import EnsembleScheduler
from .errors import InferenceError, ModelConfigError
from .request import InferRequest
from .scheduler import Scheduler
from .statistics import FAILURE_BACKEND, FAILURE_CANCELED, FAILURE_OTHER, ModelStats

log = logging.getLogger(__name__)


def _shape_text(dims) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


class Model:
    """One loaded version of one model: validates requests and keeps statistics."""

    def __init__(self, config: mc.ModelConfig, version: int,
                 scheduler: Scheduler | EnsembleScheduler, stats: ModelStats) -> None:
        self.config = config
        self.name = config.name
        self.version = version
        self.scheduler = scheduler
        self.stats = stats
        self.stopping = False
        self.inputs = {t.name: t for t in config.input}
        self.outputs = {t.name: t for t in config.output}
        self.batching = config.max_batch_size > 0

    def full_shape(self, tensor: mc.ModelInput | mc.ModelOutput) -> list[int]:
        return ([-1] if self.batching else []) + list(tensor.dims)

    def validate(self, request: InferRequest) -> None:
        """Check names, shapes and batch size as Triton does before scheduling."""
        name = self.name
        unknown = [n for n in request.inputs if n not in self.inputs]
        if unknown:
            raise InferenceError.invalid(
                f"unexpected inference input '{unknown[0]}' for model '{name}'")
        missing = [n for n, t in self.inputs.items() if n not in request.inputs and not t.optional]
        if missing:
            raise InferenceError.invalid(
                f"expected {len(self.inputs)} inputs but got {len(request.inputs)} inputs for "
                f"model '{name}'. Got input(s) {sorted(request.inputs)}, but missing required "
                f"input(s) {missing}. Please provide all required input(s).")
        batch = None
        for input_name, array in request.inputs.items():
            declared = self.inputs[input_name]
            want = CONFIG_TO_NUMPY[declared.data_type]
            if array.dtype != want and not (want == np.object_ and array.dtype.kind in "OSU"):
                raise InferenceError.invalid(
                    f"inference input '{input_name}' data-type is '{array.dtype}', but model "
                    f"'{name}' expects '{wire_name(declared.data_type)}'")
            shape = list(array.shape)
            dims = shape
            if self.batching:
                if not shape:
                    raise InferenceError.invalid(
                        f"input '{input_name}' for model '{name}' must have a batch dimension")
                if batch is None:
                    batch = shape[0]
                elif shape[0] != batch:
                    raise InferenceError.invalid(
                        f"input '{input_name}' batch size does not match other inputs for "
                        f"'{name}'")
                dims = shape[1:]
            if len(dims) != len(declared.dims) or any(
                    d != -1 and d != s for d, s in zip(declared.dims, dims, strict=True)):
                raise InferenceError.invalid(
                    f"unexpected shape for input '{input_name}' for model '{name}'. Expected "
                    f"{_shape_text(self.full_shape(declared))}, got {_shape_text(shape)}")
        if self.batching:
            if batch is None or batch < 1 or batch > self.config.max_batch_size:
                raise InferenceError.invalid(
                    f"inference request batch-size must be <= {self.config.max_batch_size} "
                    f"for '{name}'" if batch else
                    f"inference request batch-size must be >= 1 for '{name}'")
            request.batch_size = batch
        else:
            request.batch_size = 1
        for output in request.requested_outputs:
            if output not in self.outputs:
                raise InferenceError.invalid(
                    f"unexpected inference output '{output}' for model '{name}'")

    @property
    def pending(self) -> int:
        """Requests waiting for an execution (Triton's nv_inference_pending_request_count)."""
        return self.scheduler.pending if isinstance(self.scheduler, Scheduler) else 0

    async def infer(self, request: InferRequest) -> dict[str, np.ndarray]:
        if self.stopping:
            # As in Triton: once shutdown begins, schedulers take no new requests, and that
            # includes the next step of an ensemble already in flight (retryable elsewhere).
            raise InferenceError.unavailable(
                f"[request id: {request.request_id or '<id_unknown>'}] Server is stopping, "
                "scheduler for model has stopped accepting new inference requests")
        # A request refused by validation never reached the model: Triton does not count it.
        self.validate(request)
        start = time.perf_counter_ns()
        ok = False
        reason = FAILURE_OTHER if isinstance(self.scheduler, EnsembleScheduler) else FAILURE_BACKEND
        try:
            outputs = await self.scheduler.infer(request)
            if request.requested_outputs:
                outputs = {n: outputs[n] for n in request.requested_outputs}
            ok = True
            if isinstance(self.scheduler, EnsembleScheduler):
                self.stats.inference_count += request.batch_size
                self.stats.execution_count += 1
            return outputs
        except asyncio.CancelledError:
            reason = FAILURE_CANCELED
            raise
        finally:
            self.stats.record_request(ok, time.perf_counter_ns() - start, reason)


class ModelRepository:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._models: dict[str, dict[int, Model]] = {}

    async def load(self) -> None:
        """Load every model; any error stops start-up, as tritonserver's --exit-on-error."""
        if not self.root.is_dir():
            raise ModelConfigError(f"model repository {self.root} does not exist")
        configs: dict[str, tuple[mc.ModelConfig, Path]] = {}
        for model_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if model_dir.name.startswith((".", "_")):
                continue
            configs[model_dir.name] = (model_config.load(model_dir), model_dir)
        plain = {n: c for n, (c, _) in configs.items()}
        loop = asyncio.get_running_loop()
        ensembles = []
        for name, (config, model_dir) in configs.items():
            if model_config.backend_of(config) == model_config.ENSEMBLE_PLATFORM:
                model_config.validate_ensemble(config, plain)
                ensembles.append((config, model_dir))
                continue
            for version in model_config.versions(config, model_dir):
                backend = await loop.run_in_executor(
                    None, create_backend, config, model_dir, version)
                stats = ModelStats(name, str(version))
                self._models.setdefault(name, {})[version] = Model(
                    config, version, Scheduler(config, backend, stats), stats)
                log.info("loaded model '%s' version %d (%s, %d instance(s))", name, version,
                         model_config.backend_of(config), backend.instance_count)
        for config, model_dir in ensembles:
            for version in model_config.versions(config, model_dir):
                self._models.setdefault(config.name, {})[version] = Model(
                    config, version, EnsembleScheduler(config, self),
                    ModelStats(config.name, str(version)))
                log.info("loaded ensemble '%s' version %d", config.name, version)

    def get(self, name: str, version: str = "") -> Model:
        versions = self._models.get(name)
        if not versions:
            raise InferenceError.not_found(f"Request for unknown model: '{name}' is not found")
        if not version:
            return versions[max(versions)]
        if not version.isdigit() or int(version) not in versions:
            raise InferenceError.not_found(
                f"Request for unknown model: '{name}' version {version} is not found")
        return versions[int(version)]

    def all(self) -> list[Model]:
        return [m for name in sorted(self._models) for _, m in sorted(self._models[name].items())]

    def names(self) -> list[str]:
        return sorted(self._models)

    def stop_accepting(self) -> None:
        for model in self.all():
            model.stopping = True

    async def close(self) -> None:
        for model in self.all():
            if isinstance(model.scheduler, Scheduler):
                await model.scheduler.close()
