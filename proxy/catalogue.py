"""What the proxy knows about each detection model, learned from the model server.

Input name, batching and labels come from ModelConfig; a KServe-v2 server without
ModelConfig is asked for ModelMetadata instead. Entries are cached and dropped when the
server stops knowing a model, so newly deployed models are found without a restart.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from .errors import ProxyError, from_upstream, is_unknown_model, upstream_code
from .infer_request import RequestTemplate
from .pool import TritonPool

log = logging.getLogger(__name__)

# The detector contract (DESIGN.md): output name -> KServe v2 datatype.
CONTRACT_OUTPUTS = {
    "num_detections": "INT32",
    "detection_boxes": "FP32",
    "detection_scores": "FP32",
    "detection_classes": "INT32",
}
_CONFIG_TYPES = {mc.TYPE_INT32: "INT32", mc.TYPE_FP32: "FP32", mc.TYPE_STRING: "BYTES"}
CONTROL_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class DetectorModel:
    name: str
    input_name: str
    batching: bool
    max_batch_size: int
    labels: tuple[str, ...]
    request: RequestTemplate

    def label(self, class_id: int) -> str:
        return self.labels[class_id] if 0 <= class_id < len(self.labels) else ""


def _contract_errors(inputs: dict[str, str], outputs: dict[str, str]) -> list[str]:
    problems = []
    if len(inputs) != 1 or next(iter(inputs.values())) != "BYTES":
        problems.append("it must have exactly one BYTES input")
    for name, dtype in CONTRACT_OUTPUTS.items():
        if outputs.get(name) != dtype:
            problems.append(f"it must output {name} as {dtype}")
    return problems


def _build(name: str, inputs: dict[str, str], outputs: dict[str, str], max_batch_size: int,
           labels: tuple[str, ...]) -> DetectorModel:
    problems = _contract_errors(inputs, outputs)
    if problems:
        raise ProxyError(grpc.StatusCode.INVALID_ARGUMENT,
                         f"model '{name}' is not a detector: {'; '.join(problems)}")
    input_name = next(iter(inputs))
    batching = max_batch_size > 0
    return DetectorModel(name, input_name, batching, max_batch_size, labels,
                         RequestTemplate(name, input_name, batching, tuple(CONTRACT_OUTPUTS)))


def from_config(config: mc.ModelConfig) -> DetectorModel:
    labels: tuple[str, ...] = ()
    if "labels" in config.parameters:
        labels = tuple(l.strip() for l in config.parameters["labels"].string_value.split(","))
    return _build(config.name,
                  {t.name: _CONFIG_TYPES.get(t.data_type, "?") for t in config.input},
                  {t.name: _CONFIG_TYPES.get(t.data_type, "?") for t in config.output},
                  config.max_batch_size, labels)


def from_metadata(meta) -> DetectorModel:
    inputs = {t.name: t.datatype for t in meta.inputs}
    # ModelMetadata shows a batch dimension but not its limit: send one image per call.
    batching = bool(meta.inputs) and len(meta.inputs[0].shape) > 1 and meta.inputs[0].shape[0] == -1
    return _build(meta.name, inputs, {t.name: t.datatype for t in meta.outputs},
                  1 if batching else 0, ())


class Catalogue:
    def __init__(self, pool: TritonPool) -> None:
        self._pool = pool
        self._models: dict[str, DetectorModel] = {}

    async def get(self, name: str) -> DetectorModel:
        model = self._models.get(name)
        if model is None:
            model = await self._load(name)
            self._models[name] = model
            log.info("model %s: input %s, batching %s, %d labels", name, model.input_name,
                     model.batching, len(model.labels))
        return model

    def known(self, name: str) -> bool:
        return name in self._models

    def forget(self, name: str) -> None:
        self._models.pop(name, None)

    async def _load(self, name: str) -> DetectorModel:
        with self._pool.lease() as client:
            try:
                response = await client.get_model_config(name, client_timeout=CONTROL_TIMEOUT_S)
                return from_config(response.config)
            except InferenceServerException as exc:
                if is_unknown_model(exc):
                    raise await self._not_found(name) from None
                if upstream_code(exc) != grpc.StatusCode.UNIMPLEMENTED:
                    raise from_upstream(exc, name) from None
            try:
                meta = await client.get_model_metadata(name, client_timeout=CONTROL_TIMEOUT_S)
                return from_metadata(meta)
            except InferenceServerException as exc:
                if is_unknown_model(exc):
                    raise await self._not_found(name) from None
                raise from_upstream(exc, name) from None

    async def _not_found(self, name: str) -> ProxyError:
        available = await self.available()
        listing = ", ".join(available) if available else "none"
        return ProxyError(grpc.StatusCode.NOT_FOUND,
                          f"model '{name}' is not served; available models: {listing}")

    async def available(self) -> list[str]:
        """Models the server has ready that follow the detector contract."""
        with self._pool.lease() as client:
            try:
                index = await client.get_model_repository_index(client_timeout=CONTROL_TIMEOUT_S)
            except InferenceServerException:
                return sorted(self._models)
            names = sorted({m.name for m in index.models if m.state in ("READY", "")})
            found = []
            for name in names:
                if name in self._models:
                    found.append(name)
                    continue
                try:
                    config = await client.get_model_config(name, client_timeout=CONTROL_TIMEOUT_S)
                    self._models[name] = from_config(config.config)
                    found.append(name)
                except (InferenceServerException, ProxyError):
                    continue
            return found
