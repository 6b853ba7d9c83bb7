"""Read ``config.pbtxt`` with Triton's own ``model_config.proto`` and check it as Triton would.

The checks matter because the same repository is served by real Triton in production: a
config that localtriton accepts but Triton rejects would only fail at deployment time.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from .datatypes import CONFIG_TO_NUMPY, wire_name
from .errors import ModelConfigError

ONNX_PLATFORM = "onnxruntime_onnx"
ENSEMBLE_PLATFORM = "ensemble"
DEFAULT_FILENAMES = {"onnxruntime": "model.onnx", "python": "model.py"}


def parse(text: str, source: str = "config.pbtxt") -> mc.ModelConfig:
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ModelConfigError(f"{source}: {exc}") from exc
    return config


def load(model_dir: Path) -> mc.ModelConfig:
    path = model_dir / "config.pbtxt"
    if not path.is_file():
        raise ModelConfigError(f"{model_dir.name}: missing config.pbtxt")
    config = parse(path.read_text(), str(path))
    autocomplete(config, model_dir.name)
    validate(config, model_dir)
    return config


def backend_of(config: mc.ModelConfig) -> str:
    if config.platform == ENSEMBLE_PLATFORM:
        return ENSEMBLE_PLATFORM
    if config.backend:
        return config.backend
    if config.platform == ONNX_PLATFORM:
        return "onnxruntime"
    return config.platform


def autocomplete(config: mc.ModelConfig, dir_name: str) -> None:
    """Fill the fields Triton fills in, so ModelConfig answers look like Triton's."""
    if not config.name:
        config.name = dir_name
    backend = backend_of(config)
    if backend == "onnxruntime":
        config.backend = "onnxruntime"
        config.platform = ONNX_PLATFORM
    if backend in DEFAULT_FILENAMES and not config.default_model_filename:
        config.default_model_filename = DEFAULT_FILENAMES[backend]
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    if backend != ENSEMBLE_PLATFORM:
        if not config.instance_group:
            config.instance_group.add()
        for i, group in enumerate(config.instance_group):
            if not group.name:  # Triton's default: instances are named after it
                group.name = f"{config.name}_{i}"
            if group.count < 1:
                group.count = 1
            if group.kind == mc.ModelInstanceGroup.KIND_AUTO:
                group.kind = mc.ModelInstanceGroup.KIND_CPU
    if config.HasField("dynamic_batching") and config.max_batch_size == 0:
        raise ModelConfigError(
            f"{config.name}: dynamic batching requires max_batch_size > 0")


def validate(config: mc.ModelConfig, model_dir: Path) -> None:
    name = config.name
    if name != model_dir.name:
        raise ModelConfigError(
            f"{model_dir.name}: model name '{name}' in config.pbtxt must match its directory")
    backend = backend_of(config)
    if backend not in ("onnxruntime", "python", ENSEMBLE_PLATFORM):
        raise ModelConfigError(
            f"{name}: unsupported backend/platform '{config.backend or config.platform}'; "
            "localtriton serves onnxruntime_onnx, python and ensemble models")
    if config.max_batch_size < 0:
        raise ModelConfigError(f"{name}: max_batch_size must be >= 0")
    for what, tensors in (("input", config.input), ("output", config.output)):
        if not tensors:
            raise ModelConfigError(f"{name}: model must declare at least one {what}")
        seen: set[str] = set()
        for tensor in tensors:
            if tensor.name in seen:
                raise ModelConfigError(f"{name}: duplicate {what} '{tensor.name}'")
            seen.add(tensor.name)
            if tensor.data_type not in CONFIG_TO_NUMPY:
                raise ModelConfigError(
                    f"{name}: {what} '{tensor.name}' has unsupported data_type "
                    f"{mc.DataType.Name(tensor.data_type)}")
            if not tensor.dims and not tensor.HasField("reshape"):
                raise ModelConfigError(f"{name}: {what} '{tensor.name}' must have dims")
            if any(d == 0 or d < -1 for d in tensor.dims):
                raise ModelConfigError(
                    f"{name}: {what} '{tensor.name}' dims must be positive or -1")
    dyn = config.dynamic_batching
    for size in dyn.preferred_batch_size:
        if size < 1 or size > config.max_batch_size:
            raise ModelConfigError(
                f"{name}: preferred_batch_size {size} must be in [1, {config.max_batch_size}]")
    if backend != ENSEMBLE_PLATFORM and not versions(config, model_dir):
        raise ModelConfigError(f"{name}: no version directory with a model file")


def versions(config: mc.ModelConfig, model_dir: Path) -> list[int]:
    """Version numbers to load, chosen by the model's version_policy as Triton does."""
    available: list[int] = []
    backend = backend_of(config)
    for child in model_dir.iterdir():
        if not (child.is_dir() and child.name.isdigit()):
            continue
        if backend == ENSEMBLE_PLATFORM or (child / config.default_model_filename).exists():
            available.append(int(child.name))
    if backend == ENSEMBLE_PLATFORM and not available:
        available = [1]  # Triton requires the version folder even for ensembles; tolerate it.
    available.sort()
    policy = config.version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return available
    if kind == "specific":
        return [v for v in available if v in set(policy.specific.versions)]
    count = policy.latest.num_versions or 1
    return available[-count:]


def string_parameter(config: mc.ModelConfig, key: str, default: str) -> str:
    if key in config.parameters:
        return config.parameters[key].string_value
    return default


def validate_ensemble(config: mc.ModelConfig, configs: dict[str, mc.ModelConfig]) -> None:
    """Check ensemble wiring as Triton does at load time: models exist, tensors exist,
    data types agree, and every ensemble output is produced by some step."""
    name = config.name
    steps = config.ensemble_scheduling.step
    if not steps:
        raise ModelConfigError(f"{name}: ensemble must have at least one step")
    types: dict[str, int] = {t.name: t.data_type for t in config.input}
    producers: dict[str, str] = {t.name: "<ensemble input>" for t in config.input}
    pending = list(steps)
    # Walk steps in dependency order so that every tensor's type is known when consumed.
    while pending:
        progressed = False
        for step in list(pending):
            if any(src not in types for src in step.input_map.values()):
                continue
            composing = configs.get(step.model_name)
            if composing is None:
                raise ModelConfigError(
                    f"{name}: step uses unknown model '{step.model_name}'")
            if backend_of(composing) == ENSEMBLE_PLATFORM:
                raise ModelConfigError(f"{name}: nested ensembles are not supported")
            if config.max_batch_size > composing.max_batch_size:
                raise ModelConfigError(
                    f"{name}: ensemble max_batch_size {config.max_batch_size} exceeds "
                    f"max_batch_size {composing.max_batch_size} of step '{step.model_name}'")
            model_inputs = {t.name: t for t in composing.input}
            model_outputs = {t.name: t for t in composing.output}
            for model_input, src in step.input_map.items():
                if model_input not in model_inputs:
                    raise ModelConfigError(
                        f"{name}: step '{step.model_name}' maps unknown input '{model_input}'")
                want = model_inputs[model_input].data_type
                if types[src] != want:
                    raise ModelConfigError(
                        f"{name}: tensor '{src}' is {wire_name(types[src])} but input "
                        f"'{model_input}' of '{step.model_name}' expects {wire_name(want)}")
            missing = set(model_inputs) - set(step.input_map)
            missing -= {t for t, c in model_inputs.items() if c.optional}
            if missing:
                raise ModelConfigError(
                    f"{name}: step '{step.model_name}' leaves input(s) {sorted(missing)} unmapped")
            for model_output, dst in step.output_map.items():
                if model_output not in model_outputs:
                    raise ModelConfigError(
                        f"{name}: step '{step.model_name}' maps unknown output '{model_output}'")
                if dst in producers:
                    raise ModelConfigError(
                        f"{name}: tensor '{dst}' is produced twice "
                        f"({producers[dst]} and '{step.model_name}')")
                producers[dst] = step.model_name
                types[dst] = model_outputs[model_output].data_type
            pending.remove(step)
            progressed = True
        if not progressed:
            unresolved = sorted({src for s in pending for src in s.input_map.values()
                                 if src not in types})
            raise ModelConfigError(
                f"{name}: ensemble tensors {unresolved} are consumed but never produced")
    for output in config.output:
        if output.name not in types:
            raise ModelConfigError(
                f"{name}: ensemble output '{output.name}' is not produced by any step")
        if types[output.name] != output.data_type:
            raise ModelConfigError(
                f"{name}: ensemble output '{output.name}' is declared "
                f"{wire_name(output.data_type)} but produced as {wire_name(types[output.name])}")
