"""The genuine tritonserver's launcher and its derived repository, without starting a server
(tests/conformance starts it for real)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from detect_localtriton import cpu_repository, tritonserver
from detect_stack.servers import MODEL_REPOSITORY, ROOT

TRITON_VENV = ROOT / ".venv-triton"


def test_derived_repository_runs_onnx_models_in_the_python_backend(tmp_path):
    derived = cpu_repository.derive(MODEL_REPOSITORY, tmp_path)
    config = cpu_repository.read_config(derived / "centerface")
    original = cpu_repository.read_config(MODEL_REPOSITORY / "centerface")
    assert (config.platform, config.backend) == ("", "python")
    assert config.parameters["onnx_model_filename"].string_value == "model.onnx"
    # Everything a client or the scheduler sees is kept.
    for field in ("input", "output", "max_batch_size", "dynamic_batching", "instance_group"):
        assert getattr(config, field) == getattr(original, field), field
    assert (derived / "centerface/1/model.py").read_text() == cpu_repository.RUNNER.read_text()
    assert (derived / "centerface/1/model.onnx").resolve() == (
        MODEL_REPOSITORY / "centerface/1/model.onnx").resolve()
    for name in ("face_detector", "preprocess", "postprocess", "null_detector"):
        assert (derived / name).resolve() == (MODEL_REPOSITORY / name).resolve()
    # The same inputs give the same directory, written once.
    assert cpu_repository.derive(MODEL_REPOSITORY, tmp_path) == derived
    assert [p.name for p in tmp_path.iterdir()] == [derived.name]


def test_a_changed_config_gets_a_new_derived_repository(tmp_path):
    source = tmp_path / "repo"
    (source / "net" / "1").mkdir(parents=True)
    (source / "net" / "1" / "model.onnx").write_bytes(b"onnx")
    config = source / "net" / "config.pbtxt"
    config.write_text(textwrap.dedent('''
        name: "net"
        platform: "onnxruntime_onnx"
        default_model_filename: "weights.onnx"
        max_batch_size: 4
        instance_group [ { count: 2 kind: KIND_GPU gpus: [ 0 ] } ]
        optimization { execution_accelerators {
          gpu_execution_accelerator [ { name: "tensorrt" } ] } }
        '''))
    first = cpu_repository.derive(source, tmp_path / "work")
    derived = cpu_repository.read_config(first / "net")
    assert derived.parameters["onnx_model_filename"].string_value == "weights.onnx"
    assert not derived.default_model_filename and not derived.HasField("optimization")
    assert [(g.count, g.kind, list(g.gpus)) for g in derived.instance_group] == [
        (2, mc.ModelInstanceGroup.KIND_CPU, [])]
    config.write_text(config.read_text().replace("max_batch_size: 4", "max_batch_size: 8"))
    second = cpu_repository.derive(source, tmp_path / "work")
    assert second != first
    assert cpu_repository.read_config(second / "net").max_batch_size == 8


def test_a_repository_without_onnx_models_is_served_as_it_is(tmp_path):
    source = tmp_path / "repo"
    (source / "m").mkdir(parents=True)
    config = mc.ModelConfig(name="m", backend="python")
    (source / "m" / "config.pbtxt").write_text(text_format.MessageToString(config))
    assert cpu_repository.derive(source, tmp_path / "work") == source.resolve()


@pytest.mark.skipif(not TRITON_VENV.exists(), reason="make triton has not run")
def test_command_line_and_environment(tmp_path):
    argv, env = tritonserver.command(
        ["--model-repository", str(MODEL_REPOSITORY), "--grpc-port", "8101",
         "--grpc-address=0.0.0.0"], TRITON_VENV, tmp_path)
    assert Path(argv[0]).name == "tritonserver" and Path(argv[0]).exists()
    assert argv[1].startswith(f"--model-repository={tmp_path.resolve()}/repository-")
    assert "--allow-metrics=false" in argv and "--allow-http=false" in argv
    assert "--grpc-address=0.0.0.0" in argv and "--grpc-address=127.0.0.1" not in argv
    assert "--grpc-port 8101 --grpc-address=0.0.0.0" in " ".join(argv)  # passed through
    backends = Path(next(a for a in argv if a.startswith("--backend-directory=")).split("=", 1)[1])
    assert {p.name for p in (backends / "python").iterdir()} >= {
        "libtriton_python.so", "triton_python_backend_utils.py", "triton_python_backend_stub"}
    assert env["PATH"].startswith(str(TRITON_VENV.resolve() / "bin"))
    assert "nvidia_pytriton.libs" in env["LD_LIBRARY_PATH"]
    with_metrics, _ = tritonserver.command(
        ["--model-repository", str(MODEL_REPOSITORY), "--metrics-port", "9000"], TRITON_VENV,
        tmp_path)
    assert "--metrics-address=127.0.0.1" in with_metrics
    assert "--allow-metrics=false" not in with_metrics


def test_a_missing_venv_says_how_to_fix_it(tmp_path, capsys):
    assert tritonserver.main(["--triton-venv", str(tmp_path / "none"),
                              "--model-repository", str(MODEL_REPOSITORY)]) == 2
    assert "run `make triton`" in capsys.readouterr().err


def test_a_starting_server_ends_the_stubs_a_killed_one_left_behind(tmp_path):
    """Processes named as this work directory's stub: one whose server (the pid on its
    command line) is its parent is live and kept; one whose server is gone is an orphan and
    ended, with its shared-memory region; a stub of another work directory is not ours."""
    stub = tmp_path / "work" / "backends" / "python" / "triton_python_backend_stub"
    other = tmp_path / "other" / "backends" / "python" / "triton_python_backend_stub"
    region = f"triton_python_backend_shm_region_test_{os.getpid()}"
    (Path("/dev/shm") / region).write_bytes(b"")

    model = tmp_path / "model.py"
    model.write_text("import time\ntime.sleep(60)\n")

    def fake(name: Path, server_pid: int) -> subprocess.Popen:
        # argv: STUB MODEL_PY SHM_REGION SHM_DEFAULT SHM_GROWTH SERVER_PID, as a stub's.
        return subprocess.Popen(["bash", "-c", f'exec -a "{name}" {sys.executable} {model} '
                                 f'{region} 1 1 {server_pid}'])

    live = fake(stub, os.getpid())  # its parent is the server it names
    orphan = fake(stub, 999_999_999)  # the server it names is not its parent: gone
    foreign = fake(other, 999_999_999)
    try:
        time.sleep(0.5)  # exec'd under their names
        assert tritonserver.reap_orphaned_stubs(tmp_path / "work") == [orphan.pid]
        assert orphan.wait(5) == -signal.SIGKILL
        assert live.poll() is None and foreign.poll() is None
        assert not (Path("/dev/shm") / region).exists()
    finally:
        for p in (live, orphan, foreign):
            p.kill()
            p.wait()
