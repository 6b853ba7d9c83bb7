"""BASELINE, NOT THE PRODUCT: a new Triton client per request, for comparison only.

A Detect server that creates a new Triton client (a new channel, a new HTTP/2 connection)
for every request and closes it afterwards. Python's gRPC would quietly let a new channel
reuse a previous one's connection through its global subchannel pool, which other
languages' clients do not do; a local pool per channel gives the real cost. Benchmarks run
it side by side with the proxy to show what the shared pool saves; it has no validation,
limits or error mapping.

    python -m detect_loadtest.baseline_client_per_request --listen 127.0.0.1:50061 \
        --triton-url 127.0.0.1:8001

With ``--triton-ca ca.crt`` each of those connections is TLS (Triton started with
``--grpc-use-ssl``), a full handshake per call, as between hosts.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio

from detect.v1 import detect_pb2
from detect_proxy import contract

# tritonclient's defaults (unlimited messages) plus a connection of its own per channel.
CHANNEL_ARGS = [("grpc.max_send_message_length", 2**31 - 1),
                ("grpc.max_receive_message_length", 2**31 - 1),
                ("grpc.use_local_subchannel_pool", 1)]
OUTPUTS = tuple(contract.OUTPUTS)


def handlers(triton_url: str, triton_ca: bytes | None = None) -> grpc.GenericRpcHandler:
    # tritonclient's root_certificates is a file it would read at every call: the CA read
    # once goes in as credentials (no session cache: every connection negotiates anew).
    creds = grpc.ssl_channel_credentials(root_certificates=triton_ca) if triton_ca else None

    async def detect(request: detect_pb2.DetectRequest, context) -> detect_pb2.DetectResponse:
        client = triton_aio.InferenceServerClient(  # the anti-pattern
            triton_url, ssl=creds is not None, creds=creds, channel_args=CHANNEL_ARGS)
        try:
            tensor = triton_aio.InferInput("IMAGE", [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[request.image]], dtype=np.object_))
            outputs = [triton_aio.InferRequestedOutput(o) for o in OUTPUTS]
            result = await client.infer(request.model or "null_detector", [tensor],
                                        outputs=outputs)
        finally:
            await client.close()
        count = int(result.as_numpy(contract.NUM_DETECTIONS)[0, 0])
        response = detect_pb2.DetectResponse(model=result.get_response().model_name)
        for box, score in zip(result.as_numpy(contract.DETECTION_BOXES)[0, :count],
                              result.as_numpy(contract.DETECTION_SCORES)[0, :count], strict=True):
            response.detections.add(box=detect_pb2.BoundingBox(
                x_min=box[0], y_min=box[1], x_max=box[2], y_max=box[3]), score=score)
        return response

    return grpc.method_handlers_generic_handler(contract.SERVICE, {
        "Detect": grpc.unary_unary_rpc_method_handler(
            detect, request_deserializer=detect_pb2.DetectRequest.FromString,
            response_serializer=detect_pb2.DetectResponse.SerializeToString)})


async def serve(listen: str, triton_url: str, triton_ca: bytes | None = None) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handlers(triton_url, triton_ca),))
    server.add_insecure_port(listen)
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:50061")
    parser.add_argument("--triton-url", default="127.0.0.1:8001")
    parser.add_argument("--triton-ca", type=Path, default=None,
                        help="CA certificate (PEM) of Triton's TLS; connect over TLS with it")
    args = parser.parse_args()
    asyncio.run(serve(args.listen, args.triton_url,
                      args.triton_ca.read_bytes() if args.triton_ca else None))
