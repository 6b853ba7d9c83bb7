"""What the proxy needs to know of a detection model, and the check that it is one.

Input name, batching and labels come from the model's ModelConfig; a KServe-v2 server
without ModelConfig is described by ModelMetadata instead. A model that breaks the detector
contract (``contract.OUTPUTS``, one BYTES input) is refused with INVALID_ARGUMENT, so a
caller naming a pipeline step gets a clear answer rather than someone else's tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

from . import contract
from .errors import invalid
from .infer_request import RequestTemplate

# An encoded image: the caller's bytes, or a view into the received message.
Image = bytes | memoryview

_CONFIG_TYPES = {mc.TYPE_INT32: "INT32", mc.TYPE_FP32: "FP32", mc.TYPE_STRING: "BYTES"}


@dataclass(frozen=True)
class DetectorModel:
    name: str
    input_name: str
    batching: bool
    max_batch_size: int
    labels: tuple[str, ...]
    request: RequestTemplate
    version: str = ""  # "": the version the model server picks (its version policy)
    variant: str = ""  # the experiment variant that chose ``version``, if any

    def label(self, class_id: int) -> str:
        return self.labels[class_id] if 0 <= class_id < len(self.labels) else ""

    def at(self, version: str, variant: str = "") -> DetectorModel:
        """This model, called at ``version`` ("" for the server's pick)."""
        if version == self.version and variant == self.variant:
            return self
        return replace(self, version=version, variant=variant,
                       request=self.request.at(version))


def _contract_errors(inputs: dict[str, str], outputs: dict[str, str]) -> list[str]:
    problems = []
    if len(inputs) != 1 or next(iter(inputs.values())) != contract.INPUT_DATATYPE:
        problems.append(f"it must have exactly one {contract.INPUT_DATATYPE} input")
    for name, dtype in contract.OUTPUTS.items():
        if outputs.get(name) != dtype:
            problems.append(f"it must output {name} as {dtype}")
    return problems


def _build(name: str, inputs: dict[str, str], outputs: dict[str, str], max_batch_size: int,
           labels: tuple[str, ...]) -> DetectorModel:
    problems = _contract_errors(inputs, outputs)
    if problems:
        raise invalid(f"model '{name}' is not a detector: {'; '.join(problems)}")
    input_name = next(iter(inputs))
    batching = max_batch_size > 0
    return DetectorModel(name, input_name, batching, max_batch_size, labels,
                         RequestTemplate(name, input_name, batching, tuple(contract.OUTPUTS)))


def from_config(config: mc.ModelConfig) -> DetectorModel:
    labels: tuple[str, ...] = ()
    if "labels" in config.parameters:
        text = config.parameters["labels"].string_value
        labels = tuple(label.strip() for label in text.split(","))
    return _build(config.name,
                  {t.name: _CONFIG_TYPES.get(t.data_type, "?") for t in config.input},
                  {t.name: _CONFIG_TYPES.get(t.data_type, "?") for t in config.output},
                  config.max_batch_size, labels)


def from_metadata(meta: pb.ModelMetadataResponse) -> DetectorModel:
    inputs = {t.name: t.datatype for t in meta.inputs}
    # ModelMetadata shows a batch dimension but not its limit: send one image per call.
    batching = (bool(meta.inputs) and len(meta.inputs[0].shape) > 1
                and meta.inputs[0].shape[0] == -1)
    return _build(meta.name, inputs, {t.name: t.datatype for t in meta.outputs},
                  1 if batching else 0, ())
