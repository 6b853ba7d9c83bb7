"""Other services `pip install` detect-client (client/): the stubs, the channel helper and the
`detect` command, with grpcio and protobuf only; the server's distribution depends on it
rather than carrying the stubs itself."""

from __future__ import annotations

import email.parser
import json
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from detect_stack.servers import ROOT, TESTDATA


def _metadata(wheel: Path) -> tuple[set[str], list[str]]:
    """(file names, Requires-Dist) of a wheel."""
    archive = zipfile.ZipFile(wheel)
    names = set(archive.namelist())
    [meta] = [n for n in names if n.endswith(".dist-info/METADATA")]
    message = email.parser.Parser().parsestr(archive.read(meta).decode())
    return names, message.get_all("Requires-Dist") or []


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("wheels")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(out), str(ROOT / "client"), str(ROOT)], check=True,
                   timeout=600, capture_output=True)
    [client] = out.glob("detect_client-*.whl")
    [server] = out.glob("detect_proxy-*.whl")
    return {"client": client, "server": server}


def test_the_client_wheel_carries_the_stubs_and_needs_grpcio_and_protobufs_only(wheels):
    names, requires = _metadata(wheels["client"])
    assert {"detect/__init__.py", "detect/v1/__init__.py", "detect/v1/detect_pb2.py",
            "detect/v1/detect_pb2_grpc.py", "detect_client/channel.py",
            "detect_client/cli.py"} <= names
    # The comments of the API, which the proxy's server reflection serves.
    assert "detect/v1/detect_descriptor_set.pb" in names
    required = sorted(r.split(">")[0].split("=")[0].strip() for r in requires if "extra" not in r)
    # google.rpc.Status (per-image errors of DetectBatch and DetectStream) comes with
    # googleapis-common-protos.
    assert required == ["googleapis-common-protos", "grpcio", "protobuf"]


def test_the_server_wheel_depends_on_the_client_instead_of_copying_the_stubs(wheels):
    names, requires = _metadata(wheels["server"])
    assert "detect_proxy/server.py" in names
    assert not any(n.startswith("detect/") for n in names)
    assert "detect-client" in requires
    assert not any(n.startswith(("tests/", "model_repository/")) for n in names)
    # Installed import names are distinctive: nothing squats `proxy` or `localtriton`.
    assert not any(n.startswith(("proxy/", "localtriton/")) for n in names)


def test_the_client_installs_into_a_clean_venv_and_calls_the_service(wheels, tmp_path,
                                                                      proxy_target):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--quiet", str(wheels["client"])],
                   check=True, timeout=300, capture_output=True)
    installed = json.loads(subprocess.run(
        [python, "-m", "pip", "list", "--format", "json", "--exclude", "pip",
         "--exclude", "setuptools"], check=True, capture_output=True, text=True).stdout)
    names = {p["name"].lower().replace("_", "-") for p in installed}
    # grpcio, protobuf, googleapis-common-protos and what they pull in (grpcio:
    # typing-extensions); none of the server's.
    assert names == {"detect-client", "grpcio", "protobuf", "googleapis-common-protos",
                     "typing-extensions"}
    detect = env_dir / "bin" / "detect"
    listed = subprocess.run([detect, "models", "--plaintext", "--target", proxy_target,
                             "--json"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert [m["name"] for m in json.loads(listed.stdout)["models"]] == ["face_detector",
                                                                       "null_detector"]
    found = subprocess.run([detect, "--plaintext", "--target", proxy_target, "--json",
                            str(TESTDATA / "astronaut.png")],
                           capture_output=True, text=True, timeout=60)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["detections"][0]["label"] == "face"
    # Drawing needs Pillow, an extra: without it, one line says how to get it.
    drawn = subprocess.run([detect, "--plaintext", "--target", proxy_target, "--draw",
                            str(tmp_path / "out"), str(TESTDATA / "astronaut.png")],
                           capture_output=True, text=True, timeout=60)
    assert drawn.returncode == 1
    assert drawn.stderr == "detect: --draw needs Pillow: pip install 'detect-client[draw]'\n"


def test_stubs_import_and_describe_the_api():
    from detect.v1 import detect_pb2, detect_pb2_grpc

    service = detect_pb2.DESCRIPTOR.services_by_name["Detector"]
    assert service.full_name == "detect.v1.Detector"
    assert [m.name for m in service.methods] == ["Detect", "DetectBatch", "DetectStream",
                                                 "ListModels"]
    stream = service.methods_by_name["DetectStream"]
    assert stream.client_streaming and stream.server_streaming
    assert hasattr(detect_pb2_grpc, "DetectorStub")
