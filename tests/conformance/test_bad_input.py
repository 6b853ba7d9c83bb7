"""Bad requests get Triton's error codes with clear messages; the server keeps serving."""

from __future__ import annotations

import asyncio
import struct
import zlib

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from detect_stack.detector_client import detections, image_input


@pytest.fixture(scope="module")
def client(triton_url: str):
    with grpcclient.InferenceServerClient(triton_url) as c:
        yield c


def _fails(client, model: str, inputs, code: str, *fragments: str) -> None:
    with pytest.raises(InferenceServerException) as err:
        client.infer(model, inputs)
    assert err.value.status() == f"StatusCode.{code}", err.value.message()
    for fragment in fragments:
        assert fragment in err.value.message()


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb's shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_non_image_bytes(client):
    _fails(client, "face_detector", [image_input(b"definitely not an image")],
           "INVALID_ARGUMENT", "not a decodable JPEG, PNG, WebP or BMP image")


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n" + b"garbage" * 100,
                                  b"\xff\xd8\xff\xe0" + b"\x00" * 64,
                                  b"RIFF\x00\x00\x00\x00WEBPjunk"])
def test_messages_carry_no_python_reprs(client, data):
    """A header followed by garbage: the reason in words, no "<_io.BytesIO object at 0x...>"."""
    with pytest.raises(InferenceServerException) as err:
        client.infer("face_detector", [image_input(data)])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    message = err.value.message()
    assert "image 0 is not a decodable" in message or "image 0 could not be decoded" in message
    assert " at 0x" not in message and "<" not in message and "object" not in message, message


def test_empty_image(client):
    _fails(client, "face_detector", [image_input(b"")], "INVALID_ARGUMENT", "empty")


def test_truncated_png(client, images):
    data = images["astronaut.png"]
    _fails(client, "face_detector", [image_input(data[: len(data) // 2])],
           "INVALID_ARGUMENT", "could not be decoded", "truncated")


def test_decompression_bombs_refused_before_decoding(client):
    _fails(client, "face_detector", [image_input(_png_declaring(5000, 5000))],
           "INVALID_ARGUMENT", "5000x5000", "limit is 16777216 pixels")
    _fails(client, "face_detector", [image_input(_png_declaring(50000, 50000))],
           "INVALID_ARGUMENT", "too large to decode", "limit is 16777216 pixels")


def test_unsupported_format(client):
    gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"
    _fails(client, "face_detector", [image_input(gif)], "INVALID_ARGUMENT", "not a decodable")


def test_wrong_shape(client):
    tensor = grpcclient.InferInput("IMAGE", [1, 2], "BYTES")
    tensor.set_data_from_numpy(np.array([[b"a", b"b"]], dtype=np.object_))
    _fails(client, "face_detector", [tensor], "INVALID_ARGUMENT",
           "unexpected shape for input 'IMAGE' for model 'face_detector'. "
           "Expected [-1,1], got [1,2]")


def test_batch_larger_than_max_batch_size(client):
    _fails(client, "face_detector", [image_input(*[b"x"] * 9)], "INVALID_ARGUMENT",
           "batch-size must be <= 8")


def test_wrong_datatype(client):
    tensor = grpcclient.InferInput("IMAGE", [1, 1], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 1), dtype=np.float32))
    _fails(client, "face_detector", [tensor], "INVALID_ARGUMENT",
           "data-type is 'FP32', but model 'face_detector' expects 'BYTES'")


def test_unknown_input_name(client):
    tensor = grpcclient.InferInput("PICTURE", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[b"x"]], dtype=np.object_))
    _fails(client, "face_detector", [tensor], "INVALID_ARGUMENT",
           "unexpected inference input 'PICTURE' for model 'face_detector'")


def test_unknown_output_name(client, images):
    with pytest.raises(InferenceServerException) as err:
        client.infer("face_detector", [image_input(images["coffee.png"])],
                     outputs=[grpcclient.InferRequestedOutput("landmarks")])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "unexpected inference output 'landmarks'" in err.value.message()


def test_unknown_model_and_version(client):
    _fails(client, "no_such_model", [image_input(b"x")], "NOT_FOUND",
           "Request for unknown model: 'no_such_model' is not found")
    with pytest.raises(InferenceServerException) as err:
        client.infer("face_detector", [image_input(b"x")], model_version="9")
    assert err.value.status() == "StatusCode.NOT_FOUND"


def test_raw_byte_size_mismatch(triton_url):
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    with grpc.insecure_channel(triton_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="centerface")
        request.inputs.add(name="input", datatype="FP32", shape=[1, 3, 32, 32])
        request.raw_input_contents.append(b"\x00" * 100)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert ("input byte size mismatch for input 'input' for model 'centerface'. "
                "Expected 12288, got 100") in err.value.details()
        # A BYTES tensor whose shape promises far more elements than the buffer holds.
        request = pb.ModelInferRequest(model_name="face_detector")
        request.inputs.add(name="IMAGE", datatype="BYTES", shape=[1, 1])
        request.raw_input_contents.append(b"\xff\xff\xff\x7fabc")
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_bad_row_fails_only_its_own_request_and_server_keeps_serving(triton_url, images):
    async def mixed():
        async with aioclient.InferenceServerClient(triton_url) as aio:
            calls = [aio.infer("face_detector", [image_input(images["astronaut.png"])])
                     for _ in range(4)]
            calls.insert(2, aio.infer("face_detector", [image_input(b"garbage")]))
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(mixed())
    assert isinstance(results[2], InferenceServerException)
    assert results[2].status() == "StatusCode.INVALID_ARGUMENT"
    for i in (0, 1, 3, 4):
        assert len(detections(results[i]).boxes) == 1
    with grpcclient.InferenceServerClient(triton_url) as client:
        assert client.is_server_live()
        stats = client.get_inference_statistics("face_detector").model_stats[0]
        assert stats.inference_stats.fail.count >= 1
