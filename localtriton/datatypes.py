"""The three spellings of a tensor type: model config enum, KServe v2 string, numpy dtype."""

from __future__ import annotations

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

_TABLE: list[tuple[int, str, np.dtype]] = [
    (mc.TYPE_BOOL, "BOOL", np.dtype(np.bool_)),
    (mc.TYPE_UINT8, "UINT8", np.dtype(np.uint8)),
    (mc.TYPE_UINT16, "UINT16", np.dtype(np.uint16)),
    (mc.TYPE_UINT32, "UINT32", np.dtype(np.uint32)),
    (mc.TYPE_UINT64, "UINT64", np.dtype(np.uint64)),
    (mc.TYPE_INT8, "INT8", np.dtype(np.int8)),
    (mc.TYPE_INT16, "INT16", np.dtype(np.int16)),
    (mc.TYPE_INT32, "INT32", np.dtype(np.int32)),
    (mc.TYPE_INT64, "INT64", np.dtype(np.int64)),
    (mc.TYPE_FP16, "FP16", np.dtype(np.float16)),
    (mc.TYPE_FP32, "FP32", np.dtype(np.float32)),
    (mc.TYPE_FP64, "FP64", np.dtype(np.float64)),
    (mc.TYPE_STRING, "BYTES", np.dtype(np.object_)),
]

CONFIG_TO_WIRE: dict[int, str] = {c: w for c, w, _ in _TABLE}
WIRE_TO_CONFIG: dict[str, int] = {w: c for c, w, _ in _TABLE}
WIRE_TO_NUMPY: dict[str, np.dtype] = {w: d for _, w, d in _TABLE}
CONFIG_TO_NUMPY: dict[int, np.dtype] = {c: d for c, _, d in _TABLE}


def wire_name(config_type: int) -> str:
    """KServe v2 datatype string ("FP32") for a model config enum value (TYPE_FP32)."""
    return CONFIG_TO_WIRE.get(config_type, "INVALID")


def numpy_to_wire(dtype: np.dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    for _, wire, np_dtype in _TABLE:
        if np_dtype == dtype:
            return wire
    raise ValueError(f"no Triton datatype for numpy dtype {dtype}")
