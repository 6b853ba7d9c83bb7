"""Other services `pip install` this project and import the generated stubs."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from detect_stack.servers import ROOT


def test_wheel_carries_generated_stubs(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(tmp_path), str(ROOT)], check=True, timeout=600,
                   capture_output=True)
    [wheel] = list(tmp_path.glob("detect_proxy-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"detect/__init__.py", "detect/v1/__init__.py", "detect/v1/detect_pb2.py",
            "detect/v1/detect_pb2_grpc.py", "detect_proxy/client.py"} <= names
    # The comments of the API, which the proxy's server reflection serves.
    assert "detect/v1/detect_descriptor_set.pb" in names
    assert not any(n.startswith(("tests/", "model_repository/")) for n in names)
    # Installed import names are distinctive: nothing squats `proxy` or `localtriton`.
    assert not any(n.startswith(("proxy/", "localtriton/")) for n in names)


def test_stubs_import_and_describe_the_api():
    from detect.v1 import detect_pb2, detect_pb2_grpc

    service = detect_pb2.DESCRIPTOR.services_by_name["Detector"]
    assert service.full_name == "detect.v1.Detector"
    assert [m.name for m in service.methods] == ["Detect", "ListModels"]
    assert hasattr(detect_pb2_grpc, "DetectorStub")
