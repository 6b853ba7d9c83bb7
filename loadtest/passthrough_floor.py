"""BASELINE: the cost floor of any Python gRPC proxy in front of Triton.

A grpc.aio generic handler with bytes in and bytes out over one shared channel: it parses
the DetectRequest, wraps the image into a minimal ModelInferRequest (raw tensor, no
validation, no tritonclient), and returns Triton's response bytes untouched. Benchmarks
compare the proxy's CPU per call with this floor, measured in the same run.

    python -m detect_loadtest.passthrough_floor --listen 127.0.0.1:50071 --triton-url 127.0.0.1:8001
"""

from __future__ import annotations

import argparse
import asyncio
import struct

import grpc
from tritonclient.grpc import service_pb2 as pb

from detect.v1 import detect_pb2
from detect_proxy import contract

OUTPUTS = tuple(contract.OUTPUTS)


async def serve(listen: str, triton_url: str) -> None:
    channel = grpc.aio.insecure_channel(triton_url, options=[
        ("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)])
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                request_serializer=lambda b: b, response_deserializer=lambda b: b)

    async def detect(raw: bytes, context) -> bytes:
        request = detect_pb2.DetectRequest.FromString(raw)
        upstream = pb.ModelInferRequest(model_name=request.model or "null_detector")
        upstream.inputs.add(name="IMAGE", datatype="BYTES", shape=[1, 1])
        for name in OUTPUTS:
            upstream.outputs.add(name=name)
        upstream.raw_input_contents.append(struct.pack("<I", len(request.image)) + request.image)
        return await infer(upstream.SerializeToString())

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(contract.SERVICE, {
        "Detect": grpc.unary_unary_rpc_method_handler(detect)}),))
    server.add_insecure_port(listen)
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:50071")
    parser.add_argument("--triton-url", default="127.0.0.1:8001")
    args = parser.parse_args()
    asyncio.run(serve(args.listen, args.triton_url))
