"""Generates the gRPC stubs from the repository's protos/ whenever detect-client is built or
installed.

The generated modules (package ``detect``) are never committed or edited by hand; this hook
and ``make protos`` are the only producers, so ``pip install`` of this distribution gives
services importable stubs (``from detect.v1 import detect_pb2_grpc``), and the server's
distribution depends on it rather than carrying its own copy.

Beside each proto's modules goes ``<name>_descriptor_set.pb``, the FileDescriptorSet of the
proto and its imports *with their comments* (source info): the compiled modules carry no
comments, and the proxy's server reflection serves this set so that ``grpcurl describe``
shows the API's documentation (``detect_proxy.reflection``). It ships in the wheel as
package data.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent  # client/: the stubs go here, as package `detect`
PROTOS = ROOT.parent / "protos"

# detect/v1/detect.proto -> detect/v1/detect_descriptor_set.pb (read by detect_proxy.reflection)
DESCRIPTOR_SET_SUFFIX = "_descriptor_set.pb"


def generate_stubs() -> None:
    import importlib.util

    import grpc_tools
    from grpc_tools import protoc

    protos = PROTOS
    include = Path(grpc_tools.__file__).parent / "_proto"
    # google/rpc/status.proto ships with googleapis-common-protos, beside its modules.
    status = importlib.util.find_spec("google.rpc.status_pb2")
    if status is None or status.origin is None:
        raise RuntimeError("googleapis-common-protos is needed to build the stubs")
    googleapis = Path(status.origin).parents[2]
    for proto in sorted(protos.rglob("*.proto")):
        rel = proto.relative_to(protos)
        descriptor_set = ROOT / rel.parent / f"{rel.stem}{DESCRIPTOR_SET_SUFFIX}"
        descriptor_set.parent.mkdir(parents=True, exist_ok=True)
        args = ["grpc_tools.protoc", f"-I{protos}", f"-I{include}", f"-I{googleapis}",
                f"--python_out={ROOT}", f"--pyi_out={ROOT}", f"--grpc_python_out={ROOT}",
                "--include_source_info", "--include_imports",
                f"--descriptor_set_out={descriptor_set}", str(rel)]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed for {rel}")
        package = ROOT / rel.parent
        while package != ROOT:  # make every generated folder an importable package
            (package / "__init__.py").touch()
            package = package.parent


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        generate_stubs()
        super().run()


if __name__ == "__main__":
    setup(cmdclass={"build_py": BuildPyWithStubs})
