"""Server reflection that serves the API with its comments.

grpcio-reflection answers from a descriptor pool, and the compiled stubs register their files
without source info, so ``grpcurl describe detect.v1.Detector`` would show the signatures but
none of the documentation written in ``protos/``. The build writes, beside the stubs, the
FileDescriptorSet of each proto with its comments (``detect/v1/detect_descriptor_set.pb``,
see ``client/setup.py``); reflection serves each compiled file with the comments (source info) of
its counterpart in the set added, and nothing else of the set: protoc's set also spells out
every field's json_name, which would make grpcurl print camelCase names where it prints
the proto's own.

Comments are added only where the set describes exactly the API the stubs were compiled
from: they locate themselves by the position of each declaration, so a stale set would put
them in the wrong places (it is then ignored, with a warning, and reflection works as
before, without comments). Every other file (health, reflection itself) comes from the
default pool unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any, Final

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection

log = logging.getLogger(__name__)

SERVICE_NAME: Final[str] = reflection.SERVICE_NAME
# Written by client/setup.py generate_stubs() beside detect_pb2 (package data of detect.v1).
DESCRIPTOR_SETS: Final[tuple[tuple[str, str], ...]] = (
    ("detect.v1", "detect_descriptor_set.pb"), ("detect.v1", "operations_descriptor_set.pb"))


def enable(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serve reflection for ``service_names`` (and for reflection itself), with comments."""
    pool = DocumentedPool(descriptor_pool.Default(), documented_files())
    reflection.enable_server_reflection([*service_names, SERVICE_NAME], server, pool=pool)


def documented_files() -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """File name -> its FileDescriptorProto with source info, from the packaged sets; empty
    (reflection without comments) where a set is missing, e.g. stubs generated before the
    sets were."""
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for package, name in DESCRIPTOR_SETS:
        try:
            data = resources.files(package).joinpath(name).read_bytes()
        except (FileNotFoundError, ModuleNotFoundError):
            log.warning("%s/%s not found: reflection serves the API without its comments "
                        "(regenerate the stubs: make protos)", package, name)
            continue
        for proto in descriptor_pb2.FileDescriptorSet.FromString(data).file:
            files[proto.name] = proto
    return files


def _api(proto: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """What the stubs' descriptor would hold of ``proto``: no comments, and no json_name
    (protoc writes it into descriptor sets, the compiled modules leave it out)."""
    api = descriptor_pb2.FileDescriptorProto()
    api.CopyFrom(proto)
    api.ClearField("source_code_info")
    messages = list(api.message_type)
    while messages:
        message = messages.pop()
        messages.extend(message.nested_type)
        for field in [*message.field, *message.extension]:
            field.ClearField("json_name")
    for extension in api.extension:
        extension.ClearField("json_name")
    return api


class DocumentedFile:
    """A file descriptor as the reflection servicer reads one (name, dependencies,
    CopyToProto), whose proto carries the comments where there are some."""

    def __init__(self, descriptor: FileDescriptor, pool: DocumentedPool) -> None:
        self._descriptor = descriptor
        self._pool = pool
        self.name: str = descriptor.name

    @property
    def dependencies(self) -> list[DocumentedFile]:
        return [DocumentedFile(d, self._pool) for d in self._descriptor.dependencies]

    def CopyToProto(self, proto: descriptor_pb2.FileDescriptorProto) -> None:
        documented = self._pool.documented(self.name)
        if documented is None:
            self._descriptor.CopyToProto(proto)
        else:
            proto.CopyFrom(documented)


class DocumentedPool:
    """The lookups grpcio-reflection makes on its ``pool``, answered by ``pool``, with file
    descriptors that carry the comments of ``documented`` where it matches the compiled
    file."""

    def __init__(self, pool: descriptor_pool.DescriptorPool,
                 documented: Mapping[str, descriptor_pb2.FileDescriptorProto]) -> None:
        self._pool = pool
        self._documented: dict[str, descriptor_pb2.FileDescriptorProto] = {}
        for name, proto in documented.items():
            try:
                compiled = descriptor_pb2.FileDescriptorProto()
                pool.FindFileByName(name).CopyToProto(compiled)
            except KeyError:
                continue  # not served: nothing imports it
            if _api(proto) != _api(compiled):
                log.warning("%s: the descriptor set differs from the compiled stubs; "
                            "reflection serves it without comments (regenerate the stubs: "
                            "make protos)", name)
                continue
            compiled.source_code_info.CopyFrom(proto.source_code_info)
            self._documented[name] = compiled

    def documented(self, name: str) -> descriptor_pb2.FileDescriptorProto | None:
        """File ``name`` as compiled, with its comments, if it has them."""
        return self._documented.get(name)

    def FindFileByName(self, name: str) -> DocumentedFile:
        return DocumentedFile(self._pool.FindFileByName(name), self)

    def FindFileContainingSymbol(self, symbol: str) -> DocumentedFile:
        return DocumentedFile(self._pool.FindFileContainingSymbol(symbol), self)

    def FindMessageTypeByName(self, name: str) -> Any:
        return self._pool.FindMessageTypeByName(name)

    def FindExtensionByNumber(self, message: Any, number: int) -> Any:
        return self._pool.FindExtensionByNumber(message, number)

    def FindAllExtensions(self, message: Any) -> Any:
        return self._pool.FindAllExtensions(message)
