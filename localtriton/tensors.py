"""Tensor (de)serialisation in the KServe v2 / Triton binary layout.

Numeric tensors travel as little-endian raw bytes (the host order on every platform
Triton supports, so numpy's native order is used). BYTES tensors travel as a sequence of
elements, each a 4-byte little-endian length followed by the element's bytes.
"""

from __future__ import annotations

import struct

import numpy as np

from .datatypes import WIRE_TO_NUMPY
from .errors import InferenceError

_LEN = struct.Struct("<I")


def element_count(shape: list[int] | tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def deserialize_bytes(buffer: bytes, count: int, name: str) -> np.ndarray:
    """Split a length-prefixed BYTES buffer into an object array of ``count`` elements."""
    out = np.empty(count, dtype=np.object_)
    view = memoryview(buffer)
    offset = 0
    for i in range(count):
        if offset + 4 > len(view):
            raise InferenceError.invalid(
                f"unexpected number of string elements {i} for inference input '{name}', "
                f"expecting {count}")
        (length,) = _LEN.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InferenceError.invalid(
                f"element {i} of BYTES input '{name}' declares {length} bytes but only "
                f"{len(view) - offset} remain")
        out[i] = bytes(view[offset:offset + length])
        offset += length
    if offset != len(view):
        raise InferenceError.invalid(
            f"unexpected number of string elements for inference input '{name}': "
            f"{len(view) - offset} trailing bytes after {count} elements")
    return out


def serialize_bytes(array: np.ndarray) -> bytes:
    parts: list[bytes] = []
    for item in array.reshape(-1):
        if isinstance(item, str):
            item = item.encode("utf-8")
        elif not isinstance(item, (bytes, bytearray)):
            item = str(item).encode("utf-8")
        parts.append(_LEN.pack(len(item)))
        parts.append(bytes(item))
    return b"".join(parts)


def from_raw(raw: bytes, datatype: str, shape: list[int], name: str, model: str = "",
             request_id: str = "") -> np.ndarray:
    """Interpret raw tensor bytes; numeric tensors are read without copying."""
    count = element_count(shape)
    if datatype == "BYTES":
        return deserialize_bytes(raw, count, name).reshape(shape)
    dtype = WIRE_TO_NUMPY[datatype]
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InferenceError.invalid(
            f"[request id: {request_id or '<id_unknown>'}] input byte size mismatch for input "
            f"'{name}' for model '{model}'. Expected {expected}, got {len(raw)}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def to_raw(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return serialize_bytes(array)
    return np.ascontiguousarray(array, dtype=WIRE_TO_NUMPY[datatype]).tobytes()


# InferTensorContents field holding each datatype when values are sent typed, not raw.
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def from_contents(contents, datatype: str, shape: list[int], name: str) -> np.ndarray:
    """Read a tensor sent in the typed ``InferTensorContents`` fields."""
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InferenceError.invalid(
            f"datatype {datatype} of input '{name}' must be sent in raw_input_contents")
    values = getattr(contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise InferenceError.invalid(
            f"unexpected number of elements {len(values)} for inference input '{name}', "
            f"expecting {count}")
    if datatype == "BYTES":
        out = np.empty(count, dtype=np.object_)
        out[:] = list(values)
        return out.reshape(shape)
    return np.asarray(values, dtype=WIRE_TO_NUMPY[datatype]).reshape(shape)
