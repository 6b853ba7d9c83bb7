"""Every config.pbtxt parses with Triton's model_config.proto and the ensemble is wired right."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from detect_localtriton import model_config
from detect_localtriton.errors import ModelConfigError
from detect_stack.servers import MODEL_REPOSITORY

CONFIGS = sorted(MODEL_REPOSITORY.glob("*/config.pbtxt"))


def _all_configs() -> dict[str, mc.ModelConfig]:
    return {p.parent.name: model_config.load(p.parent) for p in CONFIGS}


def test_repository_has_the_detector_and_its_steps():
    assert {p.parent.name for p in CONFIGS} == {"face_detector", "preprocess", "centerface",
                                                "postprocess", "null_detector",
                                                "object_detector", "nanodet"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.parent.name)
def test_config_parses_with_triton_proto(path: Path):
    config = model_config.parse(path.read_text(), str(path))
    assert config.name == path.parent.name  # Triton requires name == directory
    assert config.max_batch_size > 0
    model_config.load(path.parent)


@pytest.mark.parametrize("name", ["face_detector", "null_detector"])
def test_detectors_follow_the_model_contract(name):
    config = _all_configs()[name]
    assert [(t.name, mc.DataType.Name(t.data_type), list(t.dims)) for t in config.input] == [
        ("IMAGE", "TYPE_STRING", [1])]
    outputs = {t.name: (mc.DataType.Name(t.data_type), list(t.dims)) for t in config.output}
    assert outputs == {
        "num_detections": ("TYPE_INT32", [1]),
        "detection_boxes": ("TYPE_FP32", [100, 4]),
        "detection_scores": ("TYPE_FP32", [100]),
        "detection_classes": ("TYPE_INT32", [100]),
    }
    labels = [t.label_filename for t in config.output if t.label_filename]
    assert labels == ["labels.txt"]
    # The labels parameter (read by the proxy) repeats labels.txt (read by Triton tools).
    names = (MODEL_REPOSITORY / name / "labels.txt").read_text().split("\n")
    assert config.parameters["labels"].string_value.split(",") == [n for n in names if n]


def test_ensemble_wiring_is_consistent():
    configs = _all_configs()
    model_config.validate_ensemble(configs["face_detector"], configs)


def _broken(mutate) -> str:
    configs = _all_configs()
    ensemble = mc.ModelConfig()
    ensemble.CopyFrom(configs["face_detector"])
    mutate(ensemble)
    with pytest.raises(ModelConfigError) as err:
        model_config.validate_ensemble(ensemble, configs)
    return str(err.value)


def test_ensemble_errors_are_caught():
    assert "unknown model 'nope'" in _broken(
        lambda e: setattr(e.ensemble_scheduling.step[1], "model_name", "nope"))
    assert "unknown input 'pixels'" in _broken(lambda e: (
        e.ensemble_scheduling.step[1].input_map.pop("input"),
        e.ensemble_scheduling.step[1].input_map.__setitem__("pixels", "preprocessed_image")))
    assert "never produced" in _broken(
        lambda e: e.ensemble_scheduling.step[2].input_map.__setitem__("scale", "missing"))
    assert "expects FP32" in _broken(
        lambda e: e.ensemble_scheduling.step[1].input_map.__setitem__("input", "IMAGE"))
    assert "declared" in _broken(
        lambda e: setattr(e.output[0], "data_type", mc.TYPE_FP32))
    assert "exceeds" in _broken(lambda e: setattr(e, "max_batch_size", 64))


def test_invalid_text_is_reported_with_its_source():
    with pytest.raises(ModelConfigError) as err:
        model_config.parse('name: "x"\nmax_batch_size: "eight"\n', "x/config.pbtxt")
    assert "x/config.pbtxt" in str(err.value)


def test_server_refuses_to_start_on_a_broken_repository(tmp_path: Path):
    repo = tmp_path / "repo"
    shutil.copytree(MODEL_REPOSITORY, repo, ignore=shutil.ignore_patterns("*.onnx"))
    for network in ("centerface/1", "nanodet/1", "nanodet/2"):
        shutil.copy(MODEL_REPOSITORY / network / "model.onnx", repo / network / "model.onnx")
    config = repo / "postprocess" / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "num_detections"', 'name: "count"'))
    proc = subprocess.run([sys.executable, "-m", "detect_localtriton",
                           "--model-repository", str(repo), "--grpc-port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "unknown output 'num_detections'" in proc.stderr
