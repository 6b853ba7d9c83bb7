"""Call Detect from the command line: ``python -m detect_proxy.client IMAGE [--target ...]``.

Prints one line per detection; exits non-zero with the gRPC status on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from pathlib import Path

import grpc

from detect.v1 import detect_pb2, detect_pb2_grpc


def channel(target: str, ca_file: str | None, cert_file: str | None,
            key_file: str | None) -> grpc.Channel:
    if not ca_file:
        return grpc.insecure_channel(target)
    def read(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    credentials = grpc.ssl_channel_credentials(read(ca_file), read(key_file), read(cert_file))
    return grpc.secure_channel(target, credentials)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="detect-client", description=__doc__.splitlines()[0])
    parser.add_argument("image", help="path to a JPEG, PNG, WebP or BMP file")
    parser.add_argument("--target", default=os.environ.get("DETECT_TARGET", "127.0.0.1:50051"),
                        help="proxy or Envoy address [env DETECT_TARGET; default: %(default)s]")
    parser.add_argument("--model", default="", help="model name (default: the server's)")
    parser.add_argument("--min-score", type=float, default=0.0)
    parser.add_argument("--max-detections", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    parser.add_argument("--ca-file", help="CA bundle: use TLS and verify the server with it")
    parser.add_argument("--cert-file", help="client certificate for mTLS")
    parser.add_argument("--key-file", help="client private key for mTLS")
    parser.add_argument("--json", action="store_true", help="print the response as JSON")
    args = parser.parse_args(argv)

    with open(args.image, "rb") as f:
        image = f.read()
    request = detect_pb2.DetectRequest(image=image, model=args.model, min_score=args.min_score,
                                       max_detections=args.max_detections)
    with channel(args.target, args.ca_file, args.cert_file, args.key_file) as ch:
        stub = detect_pb2_grpc.DetectorStub(ch)
        try:
            response = stub.Detect(request, timeout=args.timeout,
                                   metadata=[("x-request-id", str(uuid.uuid4()))])
        except grpc.RpcError as err:
            print(f"{err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    if args.json:
        from google.protobuf import json_format

        print(json.dumps(json_format.MessageToDict(response), indent=2))
        return 0
    print(f"{args.image}: {response.image_width}x{response.image_height}, model "
          f"{response.model} v{response.model_version}, {len(response.detections)} detection(s)")
    for d in response.detections:
        b = d.box
        print(f"  {d.label or d.class_id} {d.score:.3f} "
              f"[{b.x_min:.1f}, {b.y_min:.1f}, {b.x_max:.1f}, {b.y_max:.1f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
