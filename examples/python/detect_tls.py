"""Call the detector through its front door: Envoy, over TLS, from synchronous Python.

Callers reach the service only through Envoy (TLS, optional mTLS, per-client rate limits),
never a proxy directly. The channel is created once at start-up and shared by every call,
so one TLS handshake and one HTTP/2 connection serve them all; every call has a deadline.

    .venv/bin/python examples/python/detect_tls.py build/testdata/astronaut.png

Defaults match `make run`: target localhost:8443, CA build/certs/ca.crt (paths are relative
to the directory it runs in). --cert/--key present a client certificate, for an Envoy in
mTLS mode.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc

from detect.v1 import detect_pb2, detect_pb2_grpc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path, help="a JPEG, PNG, WebP or BMP file")
    parser.add_argument("--target", default=env("DETECT_TARGET", "localhost:8443"),
                        help="Envoy's front listener [env DETECT_TARGET; %(default)s]")
    parser.add_argument("--ca", default=env("DETECT_CA_FILE", "build/certs/ca.crt"),
                        help="CA that signed Envoy's certificate [env DETECT_CA_FILE; %(default)s]")
    parser.add_argument("--cert", default=env("DETECT_CERT_FILE"),
                        help="client certificate, for mTLS [env DETECT_CERT_FILE]")
    parser.add_argument("--key", default=env("DETECT_KEY_FILE"),
                        help="client private key, for mTLS [env DETECT_KEY_FILE]")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="deadline of each call, in seconds [%(default)s]")
    parser.add_argument("--min-score", type=float, default=0.0)
    args = parser.parse_args(argv)
    if bool(args.cert) != bool(args.key):
        parser.error("--cert and --key go together")
    return args


def open_channel(target: str, ca: str, cert: str | None, key: str | None) -> grpc.Channel:
    """The one channel of the process: TLS verified against ``ca``, with a client
    certificate when ``cert`` and ``key`` are given."""
    def read(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    credentials = grpc.ssl_channel_credentials(root_certificates=read(ca),
                                               private_key=read(key),
                                               certificate_chain=read(cert))
    return grpc.secure_channel(target, credentials)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with open_channel(args.target, args.ca, args.cert, args.key) as channel:  # at start-up
        detector = detect_pb2_grpc.DetectorStub(channel)
        try:
            listed = detector.ListModels(detect_pb2.ListModelsRequest(), timeout=args.timeout)
            for model in listed.models:
                default = " (default)" if model.name == listed.default_model else ""
                print(f"model {model.name}{default}: labels {', '.join(model.labels)}; "
                      f"versions {', '.join(model.versions)}; "
                      f"max {model.limits.max_bytes} bytes, "
                      f"{model.limits.max_width}x{model.limits.max_height} pixels")

            request = detect_pb2.DetectRequest(image=args.image.read_bytes(),
                                               min_score=args.min_score)
            response = detector.Detect(request, timeout=args.timeout)
        except grpc.RpcError as err:  # the status code says whether to retry (README)
            print(f"{err.code().name}: {err.details()}", file=sys.stderr)
            return 1

    print(f"{args.image}: {response.image_width}x{response.image_height}, "
          f"{response.model} v{response.model_version}, "
          f"{len(response.detections)} detection(s)")
    for d in response.detections:
        b = d.box
        print(f"  {d.label or d.class_id} {d.score:.3f} "
              f"[{b.x_min:.1f}, {b.y_min:.1f}, {b.x_max:.1f}, {b.y_max:.1f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
