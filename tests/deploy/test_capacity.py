"""The capacity model: its arithmetic, its input contract, and the report it writes.

The inputs are a small fixture in the shape loadtest/bench.py writes (bench_fixture.json),
not real measurements.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from detect_deploy import capacity
from detect_deploy.manifests import DEPLOY

FIXTURE = Path(__file__).resolve().parent / "bench_fixture.json"
REAL_BENCH = DEPLOY.parent / "loadtest" / "results" / "bench" / "bench.json"
# loadtest/gpu_network.py --runtime torch on an H100 (loadtest/results/gpu/README.md)
GPU_BENCH = DEPLOY.parent / "loadtest" / "results" / "gpu" / "gpu.json"


def fixture_data() -> dict:
    return json.loads(FIXTURE.read_text())


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    return path


def test_the_formulas_on_the_fixture():
    _, rows = capacity.load(FIXTURE)
    p = capacity.plan(rows, target_rps=10_000, utilisation=0.65, gpu_rps=500, spare_gpu=1)
    # Proxy CPU: the larger of "proxy" (0.40 ms) and "envoy+proxy" (0.50 ms).
    assert p.proxy_ms == 0.50
    assert p.proxy_cores == pytest.approx(10_000 * 0.50 / 1000 / 0.65)
    assert p.proxy_pods == 8
    assert p.envoy_cores == pytest.approx(10_000 * 0.20 / 1000 / 0.65)
    assert p.aggregation_cores == pytest.approx(10_000 * 0.30 / 1000 / 0.65)
    assert p.gpu_replicas == math.ceil(10_000 / (500 * 0.65)) + 1 == 32
    assert p.rps_per_pod * p.proxy_pods >= 10_000


def test_gpu_hosts_cpu_counts_pre_and_postprocessing_per_image_class():
    classes = {c.image: c for c in capacity.load_image_classes(FIXTURE)}
    # 12 MP: backend 95 ms = preprocess 35 + network 48 + postprocess 2 + framework 10.
    photo = classes["phone-12mp.jpg"]
    assert (photo.proxy_ms, photo.envoy_ms, photo.framework_ms) == (3.0, 2.0, 10.0)
    assert photo.gpu_host_cpu_ms == 35.0 + 2.0 + 10.0
    # 1 MP: the backend spent less than the steps in-process (batches): framework is 0.
    assert classes["phone-1mp.jpg"].framework_ms == 0.0
    _, rows = capacity.load(FIXTURE)
    p = capacity.plan(rows, 10_000, 0.5, 500, 0, list(classes.values()))
    assert p.sized_class is photo
    assert p.cores(photo.gpu_host_cpu_ms) == pytest.approx(10_000 * 47 / 1000 / 0.5)


def test_the_report_sizes_the_gpu_hosts_cpu_or_says_why_not(tmp_path):
    out = tmp_path / "CAPACITY.md"
    assert capacity.main(["--bench", str(FIXTURE), "--out", str(out),
                          "--target-utilisation", "0.5"]) == 0
    text = out.read_text()
    assert "GPU-host CPU for pre/postprocessing, phone-12mp.jpg" in text
    assert "**940 cores**" in text
    assert "| phone-1mp.jpg |" in text
    data = fixture_data()
    data.pop("pipeline_limit")
    assert capacity.main(["--bench", str(write(tmp_path, data)), "--out", str(out)]) == 0
    assert "not sized: run the full `make bench`" in out.read_text()


def test_more_headroom_means_more_of_everything():
    _, rows = capacity.load(FIXTURE)
    tight = capacity.plan(rows, 10_000, 0.9, 500, 0)
    loose = capacity.plan(rows, 10_000, 0.5, 500, 0)
    assert loose.proxy_cores > tight.proxy_cores and loose.envoy_cores > tight.envoy_cores
    assert loose.gpu_replicas > tight.gpu_replicas


def test_repeated_scenarios_take_the_costlier_row(tmp_path):
    data = fixture_data()
    data["results"].append({**data["results"][0], "cpu_ms_per_request": {"front": 0.9}})
    _, rows = capacity.load(write(tmp_path, data))
    assert rows["proxy"].cpu_ms["front"] == 0.9


@pytest.mark.parametrize("scenario", capacity.REQUIRED)
def test_a_missing_scenario_is_named(tmp_path, scenario):
    data = fixture_data()
    data["results"] = [r for r in data["results"] if r["scenario"] != scenario]
    with pytest.raises(capacity.InputError, match=f"'{re.escape(scenario)}'.*missing"):
        capacity.load(write(tmp_path, data))


def test_a_missing_envoy_measurement_is_named(tmp_path):
    data = fixture_data()
    for r in data["results"]:
        r["cpu_ms_per_request"].pop("envoy", None)
    with pytest.raises(capacity.InputError,
                       match="'envoy\\+proxy' has no cpu_ms_per_request.envoy"):
        capacity.load(write(tmp_path, data))


def test_unusable_files_fail_clearly(tmp_path):
    with pytest.raises(capacity.InputError, match="no such file"):
        capacity.load(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(capacity.InputError, match="not a bench result"):
        capacity.load(tmp_path / "bad.json")
    data = fixture_data()
    data["results"][0]["cpu_ms_per_request"]["front"] = 0
    with pytest.raises(capacity.InputError, match="expected > 0"):
        capacity.load(write(tmp_path, data))


def test_command_line_writes_the_report_with_inputs_formula_and_assumption(tmp_path):
    out = tmp_path / "CAPACITY.md"
    result = subprocess.run([sys.executable, "-m", "detect_deploy.capacity",
                             "--bench", str(FIXTURE), "--out", str(out),
                             "--gpu-rps-per-replica", "800"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert "10,000 requests per second" in text
    assert "**Assumption, not measured here**" in text and "**800 face_detector" in text
    assert "10,000 × 0.5 ms / 1000 / 0.65" in text  # the formula with its inputs
    assert f"**{math.ceil(10_000 / (800 * 0.65)) + 1} replicas**" in text
    for scenario in capacity.REQUIRED:
        assert f"| `{scenario}` |" in text
    assert "--gpu-rps-per-replica 800" in text  # how to regenerate it


def test_command_line_reports_a_missing_scenario_and_fails(tmp_path):
    data = fixture_data()
    data["results"] = [r for r in data["results"] if r["scenario"] != "envoy+proxy"]
    result = subprocess.run([sys.executable, "-m", "detect_deploy.capacity", "--bench",
                             str(write(tmp_path, data)), "--out", str(tmp_path / "c.md")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "'envoy+proxy'" in result.stderr and "missing" in result.stderr
    assert not (tmp_path / "c.md").exists()


@pytest.mark.skipif(not (DEPLOY / "CAPACITY.md").exists(), reason="not generated yet")
def test_committed_report_is_what_the_model_gives_for_the_committed_bench(tmp_path):
    committed = (DEPLOY / "CAPACITY.md").read_text()
    command = committed.split("```sh\n", 1)[1].split("\n```", 1)[0].split()
    assert command[:3] == [".venv/bin/python", "-m", "detect_deploy.capacity"]
    out = tmp_path / "CAPACITY.md"
    args = command[1:]
    args[args.index("--out") + 1] = str(out)
    inputs = [DEPLOY.parent / args[args.index(flag) + 1]
              for flag in ("--bench", "--gpu-bench") if flag in args]
    for path in inputs:
        if not path.exists():
            pytest.skip(f"{path} (the report's input) is not in this checkout")
    result = subprocess.run([sys.executable, *args],
                            capture_output=True, text=True, timeout=60, cwd=DEPLOY.parent)
    assert result.returncode == 0, result.stderr
    assert out.read_text().split("## Target", 1)[1] == committed.split("## Target", 1)[1]


def test_a_gpu_measurement_replaces_the_assumption_and_a_cpu_one_is_refused(tmp_path):
    from detect_loadtest import gpu_network

    measured = tmp_path / "gpu.json"
    assert gpu_network.main(["--out", str(measured), "--batches", "1,2",
                             "--seconds", "0.1"]) == 0
    data = json.loads(measured.read_text())
    centerface = data["networks"][0]
    assert centerface["model"] == "centerface" and set(centerface["batches"]) == {"1", "2"}
    assert data["device"] == "cpu"  # this machine has no GPU
    assert (centerface["runtime"], centerface["precision"]) == ("onnxruntime", "fp32")
    with pytest.raises(capacity.InputError, match="not on a GPU"):
        capacity.gpu_measurement(measured)
    centerface.update(provider="CUDAExecutionProvider", serving_images_per_s=1200.0)
    data["device"] = "NVIDIA H100"
    measured.write_text(json.dumps(data))
    out = tmp_path / "CAPACITY.md"
    assert capacity.main(["--bench", str(FIXTURE), "--out", str(out),
                          "--gpu-bench", str(measured)]) == 0
    text = out.read_text()
    assert "**Measured on a GPU**: NVIDIA H100, onnxruntime's CUDA execution provider" in text
    assert "Assumption" not in text and "fp16" not in text
    assert f"**{math.ceil(10_000 / (1200 * 0.65)) + 1} replicas**" in text


@pytest.mark.skipif(not GPU_BENCH.exists(), reason="no GPU measurement in this checkout")
def test_the_committed_torch_measurement_sizes_with_fp32_and_names_how_it_ran(tmp_path):
    data = json.loads(GPU_BENCH.read_text())
    row = data["networks"][0]
    g = capacity.gpu_measurement(GPU_BENCH)
    assert g.images_per_s == row["serving_images_per_s"] == \
        row["batches"][str(row["max_batch_size"])]["images_per_s"]
    assert (g.device, g.precision, g.max_batch_size) == (data["device"], "fp32", 8)
    assert g.runtime.startswith("PyTorch on CUDA") and "onnx2torch" in g.runtime
    assert g.fp16_images_per_s == row["serving_fp16_images_per_s"]
    assert row["agreement"]["fp16_agrees"] and g.fp16_max_abs_diff is not None
    out = tmp_path / "CAPACITY.md"
    assert capacity.main(["--bench", str(FIXTURE), "--out", str(out),
                          "--gpu-bench", str(GPU_BENCH)]) == 0
    text = " ".join(out.read_text().split())  # the paragraph is wrapped
    assert f"**Measured on a GPU**: {data['device']}, PyTorch on CUDA" in text
    assert "fp32 with TF32 convolutions" in text and "For reference only, fp16" in text
    assert f"⌈10,000 / ({g.images_per_s:,.0f} × 0.65)⌉" in text
    assert f"**{math.ceil(10_000 / (g.images_per_s * 0.65)) + 1} replicas**" in text
    row["provider"] = "torch-cpu"
    measured = write(tmp_path, data)
    with pytest.raises(capacity.InputError, match="ran on torch-cpu, not on a GPU"):
        capacity.gpu_measurement(measured)


def test_max_batch_size_is_read_without_the_project_environment(monkeypatch):
    from detect_loadtest import gpu_network

    loaded = gpu_network.max_batch_size("centerface")
    monkeypatch.setitem(sys.modules, "detect_localtriton.model_config", None)  # ImportError
    assert gpu_network.max_batch_size("centerface") == loaded == 8


def test_the_torch_runtime_checks_agreement_and_a_cpu_run_is_refused(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx2torch")
    from detect_loadtest import gpu_network

    if not (gpu_network.REPOSITORY / "centerface" / "1" / "model.onnx").is_file():
        pytest.skip("no CenterFace model (make models)")
    measured = tmp_path / "gpu.json"
    assert gpu_network.main(["--runtime", "torch", "--out", str(measured), "--batches", "1",
                             "--seconds", "0.1"]) == 0
    data = json.loads(measured.read_text())
    row = data["networks"][0]
    assert data["runtime"] == "torch" and row["precision"] == "fp32"
    assert max(row["agreement"]["max_abs_diff_fp32"].values()) < 0.1
    if row["provider"] == "torch-cpu":
        with pytest.raises(capacity.InputError, match="not on a GPU"):
            capacity.gpu_measurement(measured)


def test_each_group_is_sized_for_its_share_with_spares_of_its_own():
    _, rows = capacity.load(FIXTURE)
    groups = [capacity.parse_group("gpu-a=0.7"), capacity.parse_group("gpu-b=0.3")]
    p = capacity.plan(rows, 10_000, 0.65, 500, 1, groups=groups)
    # ceil(R * share / (gpu_rps * u)) + spare
    assert p.group_replicas(groups[0]) == math.ceil(10_000 * 0.7 / (500 * 0.65)) + 1 == 23
    assert p.group_replicas(groups[1]) == math.ceil(10_000 * 0.3 / (500 * 0.65)) + 1 == 11
    assert p.grouped_gpu_replicas == 34 >= p.gpu_replicas == 32
    # One group serving everything is the single pool.
    whole = capacity.plan(rows, 10_000, 0.65, 500, 1, groups=[capacity.parse_group("all=1")])
    assert whole.grouped_gpu_replicas == whole.gpu_replicas


@pytest.mark.parametrize("text, message", [
    ("gpu-a", "NAME=SHARE"), ("GPU A=0.5", "NAME=SHARE"), ("gpu-a=half", "a number"),
    ("gpu-a=0", r"\(0, 1\]"), ("gpu-a=1.5", r"\(0, 1\]")])
def test_a_malformed_group_is_refused(text, message):
    with pytest.raises(ValueError, match=message):
        capacity.parse_group(text)


def test_shares_must_cover_every_call_and_name_each_group_once():
    with pytest.raises(ValueError, match="add up to 0.8"):
        capacity.check_groups([capacity.GroupShare("a", 0.5), capacity.GroupShare("b", 0.3)])
    with pytest.raises(ValueError, match="given twice"):
        capacity.check_groups([capacity.GroupShare("a", 0.5), capacity.GroupShare("a", 0.5)])
    capacity.check_groups([capacity.GroupShare("a", 1), capacity.GroupShare("b", 1)])


def test_the_report_breaks_gpu_replicas_down_per_group_with_the_formula(tmp_path):
    out = tmp_path / "CAPACITY.md"
    result = subprocess.run([sys.executable, "-m", "detect_deploy.capacity",
                             "--bench", str(FIXTURE), "--out", str(out),
                             "--gpu-rps-per-replica", "500",
                             "--group", "gpu-a=0.7", "--group", "gpu-b=0.3"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert "## Per Triton group" in text
    assert "⌈R × share_g / (gpu_rps_per_replica × u)⌉ + spare replicas" in text
    assert "| `gpu-a` | 0.7 | 7,000 | ⌈10,000 × 0.7 / (500 × 0.65)⌉ + 1 spare | " \
           "**23 replicas** |" in text
    assert "| `gpu-b` | 0.3 | 3,000 | ⌈10,000 × 0.3 / (500 × 0.65)⌉ + 1 spare | " \
           "**11 replicas** |" in text
    assert "**34 GPU replicas** in all groups" in text
    assert "--group gpu-a=0.7 --group gpu-b=0.3" in text  # how to regenerate it
    bad = subprocess.run([sys.executable, "-m", "detect_deploy.capacity", "--bench",
                          str(FIXTURE), "--out", str(tmp_path / "c.md"), "--group", "a=0.5"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "add up to 0.5" in bad.stderr
    assert not (tmp_path / "c.md").exists()


def test_without_groups_the_report_has_no_group_section(tmp_path):
    out = tmp_path / "CAPACITY.md"
    assert capacity.main(["--bench", str(FIXTURE), "--out", str(out)]) == 0
    assert "Per Triton group" not in out.read_text()
