"""``inference.GRPCInferenceService``: Triton's gRPC protocol, from tritonclient's own stubs.

RPCs that localtriton does not implement (shared memory, tracing, log settings, streaming)
keep the generated servicer's UNIMPLEMENTED answer. Model load and unload (explicit model
control) answer as tritonserver does: see ``repository.py`` for their semantics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from . import __version__
from .datatypes import WIRE_TO_NUMPY, wire_name
from .errors import InferenceError
from .repository import Model, ModelRepository
from .request import InferRequest
from .tensors import from_contents, from_raw, to_raw

log = logging.getLogger(__name__)

EXTENSIONS = ["model_repository", "model_repository(unload_dependents)",
              "model_configuration", "schedule_policy", "statistics"]

# tritonserver's answer to RepositoryModelLoad / RepositoryModelUnload without explicit model
# control, whatever the model.
NOT_EXPLICIT = "explicit model load / unload is not allowed if polling is enabled"


def _parameters(params) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in params.items():
        kind = value.WhichOneof("parameter_choice")
        if kind:
            out[key] = getattr(value, kind)
    return out


def parse_inputs(request: pb.ModelInferRequest, model: Model) -> dict[str, np.ndarray]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InferenceError.invalid(
            f"expected {len(request.inputs)} raw input contents, one per input, got {len(raw)}")
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in inputs:
            raise InferenceError.invalid(f"input '{name}' is given more than once")
        declared = model.inputs.get(name)
        if declared is None:
            raise InferenceError.invalid(
                f"unexpected inference input '{name}' for model '{model.name}'")
        if tensor.datatype not in WIRE_TO_NUMPY:
            raise InferenceError.invalid(
                f"invalid datatype '{tensor.datatype}' for input '{name}'")
        expected = wire_name(declared.data_type)
        if tensor.datatype != expected:
            raise InferenceError.invalid(
                f"inference input '{name}' data-type is '{tensor.datatype}', but model "
                f"'{model.name}' expects '{expected}'")
        shape = list(tensor.shape)
        if any(d < 0 for d in shape):
            raise InferenceError.invalid(
                f"input '{name}' has a negative dimension in shape {shape}")
        if raw:
            if tensor.HasField("contents"):
                raise InferenceError.invalid(
                    f"contents field must not be specified when using raw_input_contents "
                    f"for '{name}' for model '{model.name}'")
            inputs[name] = from_raw(raw[index], tensor.datatype, shape, name, model.name,
                                    request.id)
        else:
            inputs[name] = from_contents(tensor.contents, tensor.datatype, shape, name)
    return inputs


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, repository: ModelRepository, explicit: bool = False,
                 ready: Callable[[], bool] = lambda: True) -> None:
        """``explicit``: models may be loaded and unloaded through the repository RPCs;
        ``ready``: what ServerReady answers (the server's readiness, strict or not)."""
        self._repository = repository
        self._explicit = explicit
        self._ready = ready

    async def _model(self, context: grpc.aio.ServicerContext, name: str, version: str) -> Model:
        try:
            return self._repository.get(name, version)
        except InferenceError as exc:
            await context.abort(exc.code, exc.message)
            raise  # unreachable: abort raises

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self._ready())

    async def ModelReady(self, request, context):
        try:
            self._repository.get(request.name, request.version)
        except InferenceError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="localtriton", version=__version__,
                                         extensions=EXTENSIONS)

    async def ModelMetadata(self, request, context):
        model = await self._model(context, request.name, request.version)
        versions = sorted({m.version for m in self._repository.all() if m.name == model.name})
        response = pb.ModelMetadataResponse(
            name=model.name, versions=[str(v) for v in versions],
            platform=model.config.platform or model.config.backend)
        for tensors, target in ((model.inputs, response.inputs), (model.outputs, response.outputs)):
            for tensor in tensors.values():
                target.add(name=tensor.name, datatype=wire_name(tensor.data_type),
                           shape=model.full_shape(tensor))
        return response

    async def ModelConfig(self, request, context):
        model = await self._model(context, request.name, request.version)
        return pb.ModelConfigResponse(config=model.config)

    async def ModelStatistics(self, request, context):
        if not request.name:
            models = self._repository.all()
        else:
            # Triton's answers: INVALID_ARGUMENT, not NOT_FOUND, and the same for a model
            # that is not in the repository as for one that is not loaded.
            versions = self._repository.served(request.name)
            if not versions:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"requested model '{request.name}' is not available")
            if not request.version:
                models = [versions[v] for v in sorted(versions)]
            elif request.version.isdigit() and int(request.version) in versions:
                models = [versions[int(request.version)]]
            else:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"requested model version is not available for model '{request.name}'")
        return pb.ModelStatisticsResponse(model_stats=[m.stats.to_proto() for m in models])

    async def RepositoryIndex(self, request, context):
        response = pb.RepositoryIndexResponse()
        for name, version, state in self._repository.index(ready=request.ready):
            entry = response.models.add(name=name, version=version)
            if state is not None:
                entry.state = state.state
                entry.reason = state.reason
        return response

    async def RepositoryModelLoad(self, request, context):
        if not self._explicit:
            await context.abort(grpc.StatusCode.UNAVAILABLE, NOT_EXPLICIT)
        overrides = [k for k in request.parameters if k == "config" or k.startswith("file:")]
        if overrides:
            # Loading with another config or other files than the repository's would make
            # a model that production Triton, reading the repository, does not serve.
            await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                f"localtriton does not support load parameters {overrides}: "
                                "change the model repository and load the model again")
        try:
            await self._repository.load_model(request.model_name)
        except InferenceError as exc:
            await context.abort(exc.code, exc.message)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        if not self._explicit:
            await context.abort(grpc.StatusCode.UNAVAILABLE, NOT_EXPLICIT)
        params = request.parameters
        await self._repository.unload_model(
            request.model_name,
            "unload_dependents" in params and params["unload_dependents"].bool_param)
        return pb.RepositoryModelUnloadResponse()

    async def ModelInfer(self, request, context):
        if log.isEnabledFor(logging.DEBUG):
            headers = dict(context.invocation_metadata() or ())
            log.debug("ModelInfer model=%s id=%s x-request-id=%s traceparent=%s",
                      request.model_name, request.id, headers.get("x-request-id", ""),
                      headers.get("traceparent", ""))
        model = await self._model(context, request.model_name, request.model_version)
        try:
            inputs = parse_inputs(request, model)
            infer = InferRequest(model.name, inputs, tuple(o.name for o in request.outputs),
                                 request_id=request.id, parameters=_parameters(request.parameters))
            outputs = await model.infer(infer)
        except InferenceError as exc:
            log.debug("request %r for %s failed: %s", request.id, model.name, exc.message)
            await context.abort(exc.code, exc.message)
        response = pb.ModelInferResponse(model_name=model.name, model_version=str(model.version),
                                         id=request.id)
        for name, array in outputs.items():
            datatype = wire_name(model.outputs[name].data_type)
            response.outputs.add(name=name, datatype=datatype, shape=array.shape)
            response.raw_output_contents.append(to_raw(array, datatype))
        return response
