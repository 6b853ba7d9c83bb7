"""Generates the gRPC stubs from protos/ whenever the package is built or installed.

The generated modules (package ``detect``) are never committed or edited by hand; this hook
and ``make protos`` are the only producers, so ``pip install`` of this project from source
gives other services importable stubs (``from detect.v1 import detect_pb2_grpc``).
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def generate_stubs() -> None:
    import grpc_tools
    from grpc_tools import protoc

    protos = ROOT / "protos"
    include = Path(grpc_tools.__file__).parent / "_proto"
    for proto in sorted(protos.rglob("*.proto")):
        rel = proto.relative_to(protos)
        args = ["grpc_tools.protoc", f"-I{protos}", f"-I{include}", f"--python_out={ROOT}",
                f"--pyi_out={ROOT}", f"--grpc_python_out={ROOT}", str(rel)]
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
