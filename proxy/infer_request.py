"""ModelInfer request bytes built around the callers' images, copying each image once.

tritonclient's ``infer()`` copies an image several times on its way out (BYTES tensor
encoding, the tensor's content, the protobuf message, its serialization): on a 500 KB image
that was a fifth of the proxy's CPU. The fixed part of a request (model name, input tensor
description, requested outputs) is the same for every call with the same batch size, so it
is serialized once; the per-call parts (request id, the raw BYTES content) are appended in
protobuf wire format, where concatenated messages merge field by field. The result is what
``ModelInferRequest.SerializeToString()`` would give for the same request.
"""

from __future__ import annotations

import struct

from tritonclient.grpc import service_pb2 as pb

_LENGTH = struct.Struct("<I")  # Triton's BYTES element prefix: 4-byte little-endian length
_RAW_FIELD = pb.ModelInferRequest.DESCRIPTOR.fields_by_name["raw_input_contents"].number
_RAW_TAG = bytes([_RAW_FIELD << 3 | 2])  # length-delimited; field numbers < 16 fit one byte


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


class RequestTemplate:
    """Serialized ModelInfer requests for one model: one BYTES input, named outputs."""

    def __init__(self, model_name: str, input_name: str, batching: bool,
                 outputs: tuple[str, ...], version: str = "") -> None:
        self.model_name = model_name
        self.input_name = input_name
        self.batching = batching
        self.outputs = outputs
        self.version = version
        self._heads: dict[int, bytes] = {}
        self._versions: dict[str, RequestTemplate] = {version: self}

    def at(self, version: str) -> RequestTemplate:
        """The same requests for ``version`` of the model ("" for the server's pick)."""
        template = self._versions.get(version)
        if template is None:
            template = self._versions[version] = RequestTemplate(
                self.model_name, self.input_name, self.batching, self.outputs, version)
        return template

    def _head(self, rows: int) -> bytes:
        head = self._heads.get(rows)
        if head is None:
            request = pb.ModelInferRequest(model_name=self.model_name,
                                           model_version=self.version)
            request.inputs.add(name=self.input_name, datatype="BYTES",
                               shape=[rows, 1] if self.batching else [1])
            for name in self.outputs:
                request.outputs.add(name=name)
            head = self._heads[rows] = request.SerializeToString()
        return head

    def build(self, images: list[bytes | memoryview], request_id: str = "") -> bytes:
        """One request for ``images`` (a row each; one image when the model does not batch)."""
        if not self.batching and len(images) != 1:
            raise ValueError(f"model '{self.model_name}' does not batch: one image per request")
        parts: list[bytes | memoryview] = [self._head(len(images))]
        if request_id:
            parts.append(pb.ModelInferRequest(id=request_id).SerializeToString())
        content_size = sum(len(image) for image in images) + _LENGTH.size * len(images)
        parts += (_RAW_TAG, _varint(content_size))
        for image in images:
            parts += (_LENGTH.pack(len(image)), image)
        return b"".join(parts)
