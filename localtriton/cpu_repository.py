"""Derive, from the production model repository, one that a Python-backend-only Triton serves.

Production keeps ``platform: "onnxruntime_onnx"`` (what a GPU Triton runs). The CPU build of
tritonserver from ``nvidia-pytriton`` has no onnxruntime backend, so each such model is
served there by ``onnx_runner.py`` in the Python backend: the same configuration (tensors,
batching, instance groups, parameters) with ``backend: "python"``, the runner as
``model.py`` and a link to the same ``model.onnx``. Every other model is linked unchanged.

The result goes into a directory named after a hash of its inputs, written under a
temporary name and renamed into place, so replicas started together share one copy and a
changed configuration never serves a stale one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

RUNNER = Path(__file__).with_name("onnx_runner.py")
ONNX_PLATFORMS = {"onnxruntime_onnx"}
ONNX_BACKENDS = {"onnxruntime"}
MODEL_FILE_PARAMETER = "onnx_model_filename"  # read by onnx_runner.py


def needs_runner(config: mc.ModelConfig) -> bool:
    return config.platform in ONNX_PLATFORMS or config.backend in ONNX_BACKENDS


def read_config(model_dir: Path) -> mc.ModelConfig:
    config = mc.ModelConfig()
    text_format.Parse((model_dir / "config.pbtxt").read_text(), config)
    return config


def runner_config(config: mc.ModelConfig) -> mc.ModelConfig:
    """The same model as a Python-backend model running ``onnx_runner.py``."""
    derived = mc.ModelConfig()
    derived.CopyFrom(config)
    derived.ClearField("platform")
    derived.backend = "python"
    derived.parameters[MODEL_FILE_PARAMETER].string_value = (
        config.default_model_filename or "model.onnx")
    derived.ClearField("default_model_filename")  # the Python backend would look for it
    derived.ClearField("optimization")  # execution accelerators are onnxruntime's
    for group in derived.instance_group:
        if group.kind == mc.ModelInstanceGroup.KIND_GPU:  # this build has no GPU
            group.kind = mc.ModelInstanceGroup.KIND_CPU
            group.ClearField("gpus")
    return derived


def _models(source: Path) -> list[Path]:
    return sorted(p for p in source.iterdir() if (p / "config.pbtxt").is_file())


def _fingerprint(source: Path) -> str:
    digest = hashlib.sha256(RUNNER.read_bytes())
    for model_dir in _models(source):
        digest.update(model_dir.name.encode())
        digest.update((model_dir / "config.pbtxt").read_bytes())
        for path in sorted(model_dir.rglob("*")):
            digest.update(str(path.relative_to(source)).encode())
    return digest.hexdigest()[:16]


def _write(source: Path, target: Path) -> None:
    for model_dir in _models(source):
        config = read_config(model_dir)
        if not needs_runner(config):
            (target / model_dir.name).symlink_to(model_dir.resolve(), target_is_directory=True)
            continue
        out = target / model_dir.name
        out.mkdir()
        (out / "config.pbtxt").write_text(text_format.MessageToString(runner_config(config)))
        for entry in sorted(model_dir.iterdir()):
            if entry.name == "config.pbtxt":
                continue
            if entry.is_dir() and entry.name.isdigit():  # a version
                version = out / entry.name
                version.mkdir()
                shutil.copyfile(RUNNER, version / "model.py")
                for item in entry.iterdir():
                    (version / item.name).symlink_to(item.resolve())
            else:
                (out / entry.name).symlink_to(entry.resolve())


def derive(source: Path, work_dir: Path) -> Path:
    """The derived repository for ``source`` under ``work_dir``, written if not there yet."""
    source = source.resolve()
    if not any(needs_runner(read_config(m)) for m in _models(source)):
        return source
    target = work_dir / f"repository-{_fingerprint(source)}"
    if target.is_dir():
        return target
    work_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".repository-", dir=work_dir))
    try:
        staging.chmod(0o755)
        _write(source, staging)
        os.rename(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not target.is_dir():  # not a replica that won the race: a real failure
            raise
    return target
