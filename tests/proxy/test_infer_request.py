"""ModelInfer bytes built around the image equal tritonclient's own request, parsed back."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc._utils import _get_inference_request

from detect_proxy.contract import OUTPUTS as CONTRACT_OUTPUTS
from detect_proxy.infer_request import RequestTemplate

OUTPUTS = tuple(CONTRACT_OUTPUTS)


def tritonclient_request(images: list[bytes], batching: bool,
                         request_id: str) -> pb.ModelInferRequest:
    """The reference: what tritonclient's infer() would send for the same call."""
    shape = [len(images), 1] if batching else [1]
    tensor = grpcclient.InferInput("IMAGE", shape, "BYTES")
    array = np.empty(shape, dtype=np.object_)
    array.reshape(-1)[:] = images
    tensor.set_data_from_numpy(array)
    return _get_inference_request(
        model_name="det", inputs=[tensor], model_version="", request_id=request_id,
        outputs=[grpcclient.InferRequestedOutput(o) for o in OUTPUTS], sequence_id=0,
        sequence_start=False, sequence_end=False, priority=0, timeout=None, parameters=None)


@pytest.mark.parametrize("batching,images,request_id", [
    (True, [b"\x89PNG one image"], "req-1"),
    (True, [b"a", b"", bytes(range(256)) * 600, b"d"], "a,b,c"),  # 153 KB: multi-byte varint
    (False, [b"jpeg bytes"], ""),
    (True, [b"x" * 200_000], ""),
])
def test_bytes_parse_to_the_same_request_as_tritonclients(batching, images, request_id):
    built = RequestTemplate("det", "IMAGE", batching, OUTPUTS).build(images, request_id)
    expected = tritonclient_request(images, batching, request_id)
    assert pb.ModelInferRequest.FromString(built) == expected


def test_heads_are_reused_per_batch_size():
    template = RequestTemplate("det", "IMAGE", True, OUTPUTS)
    first = template.build([b"a"], "")
    assert template.build([b"b"], "")[: len(first) - 1] == first[:-1]
    two = pb.ModelInferRequest.FromString(template.build([b"a", b"b"], ""))
    assert list(two.inputs[0].shape) == [2, 1]


def test_a_model_without_batching_takes_one_image():
    with pytest.raises(ValueError, match="does not batch"):
        RequestTemplate("det", "IMAGE", False, OUTPUTS).build([b"a", b"b"])
