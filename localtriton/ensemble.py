"""Ensemble execution: run steps as soon as the tensors they read exist.

Each step is an ordinary request to its composing model, so it goes through that model's
scheduler: concurrent ensemble requests are dynamically batched at every step, as in Triton.
A request finds its steps' models when it starts and holds them until it ends, so a request
in flight completes even if a composing model is unloaded meanwhile (explicit model control).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from .errors import InferenceError
from .request import InferRequest

if TYPE_CHECKING:
    from .repository import Model, ModelRepository


class EnsembleScheduler:
    def __init__(self, config: mc.ModelConfig, repository: ModelRepository) -> None:
        self._config = config
        self._repository = repository
        self._steps = list(config.ensemble_scheduling.step)
        self._outputs = [t.name for t in config.output]

    async def infer(self, request: InferRequest) -> dict[str, np.ndarray]:
        models = {id(step): self._model(step) for step in self._steps}
        with contextlib.ExitStack() as held:
            for model in models.values():
                held.enter_context(model.hold())
            return await self._run(request, models)

    def _model(self, step: mc.ModelEnsembling.Step) -> Model:
        version = str(step.model_version) if step.model_version > 0 else ""
        try:
            return self._repository.get(step.model_name, version)
        except InferenceError as exc:
            raise InferenceError(exc.code, self._prefix + exc.message) from None

    @property
    def _prefix(self) -> str:
        return f"in ensemble '{self._config.name}', "

    async def _run(self, request: InferRequest,
                   models: dict[int, Model]) -> dict[str, np.ndarray]:
        tensors: dict[str, np.ndarray] = dict(request.inputs)
        wanted = set(request.requested_outputs or self._outputs)
        pending = list(self._steps)
        while pending:
            ready = [s for s in pending if all(src in tensors for src in s.input_map.values())]
            if not ready:  # wiring is validated at load time; this is a defensive stop
                raise InferenceError.internal(
                    f"ensemble '{self._config.name}' cannot make progress")
            results = await asyncio.gather(
                *(self._run_step(s, models[id(s)], tensors, request) for s in ready))
            for step, outputs in zip(ready, results, strict=True):
                for model_output, dst in step.output_map.items():
                    tensors[dst] = outputs[model_output]
                pending.remove(step)
            if wanted.issubset(tensors):
                break
        return {name: tensors[name] for name in self._outputs if name in wanted}

    async def _run_step(self, step: mc.ModelEnsembling.Step, model: Model,
                        tensors: dict[str, np.ndarray],
                        parent: InferRequest) -> dict[str, np.ndarray]:
        inputs = {model_input: tensors[src] for model_input, src in step.input_map.items()}
        batch = parent.batch_size
        sub = InferRequest(step.model_name, inputs, tuple(step.output_map), batch,
                           parent.request_id, parent.parameters)
        try:
            return await model.infer(sub)
        except InferenceError as exc:
            raise InferenceError(exc.code, self._prefix + exc.message) from None
