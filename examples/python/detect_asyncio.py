"""Call the detector through Envoy over TLS from asyncio, several images at once.

An asyncio service shares one `grpc.aio` channel, created at start-up, between all its
tasks: concurrent calls become concurrent HTTP/2 streams on one connection, each with its
own deadline. A semaphore bounds how many are in flight, so a burst stays within the
caller's rate limit instead of turning into RESOURCE_EXHAUSTED.

    .venv/bin/python examples/python/detect_asyncio.py build/testdata/*.png

Defaults match `make run`: target localhost:8443, CA build/certs/ca.crt; --cert/--key
present a client certificate, for an Envoy in mTLS mode.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import grpc

from detect.v1 import detect_pb2, detect_pb2_grpc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", type=Path, nargs="+", help="JPEG, PNG, WebP or BMP files")
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
    parser.add_argument("--max-in-flight", type=int, default=8,
                        help="calls sent at once at most [%(default)s]")
    args = parser.parse_args(argv)
    if bool(args.cert) != bool(args.key):
        parser.error("--cert and --key go together")
    return args


def open_channel(target: str, ca: str, cert: str | None, key: str | None) -> grpc.aio.Channel:
    def read(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    credentials = grpc.ssl_channel_credentials(root_certificates=read(ca),
                                               private_key=read(key),
                                               certificate_chain=read(cert))
    return grpc.aio.secure_channel(target, credentials)


async def detect(detector: detect_pb2_grpc.DetectorStub, image: Path, timeout: float,
                 slots: asyncio.Semaphore) -> tuple[bool, str]:
    """Whether the call succeeded, and its result as text: a failed call is reported, not
    raised, so that one bad image does not cancel the others."""
    async with slots:
        try:
            response = await detector.Detect(detect_pb2.DetectRequest(image=image.read_bytes()),
                                             timeout=timeout)
        except grpc.aio.AioRpcError as err:
            return False, f"{image}: {err.code().name}: {err.details()}"
    lines = [f"{image}: {response.image_width}x{response.image_height}, "
             f"{len(response.detections)} detection(s)"]
    for d in response.detections:
        b = d.box
        lines.append(f"  {d.label or d.class_id} {d.score:.3f} "
                     f"[{b.x_min:.1f}, {b.y_min:.1f}, {b.x_max:.1f}, {b.y_max:.1f}]")
    return True, "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    async with open_channel(args.target, args.ca, args.cert, args.key) as channel:
        detector = detect_pb2_grpc.DetectorStub(channel)
        try:
            listed = await detector.ListModels(detect_pb2.ListModelsRequest(),
                                               timeout=args.timeout)
        except grpc.aio.AioRpcError as err:
            print(f"{err.code().name}: {err.details()}", file=sys.stderr)
            return 1
        print("models: " + ", ".join(m.name for m in listed.models)
              + f" (default {listed.default_model})")

        slots = asyncio.Semaphore(args.max_in_flight)
        results = await asyncio.gather(*(detect(detector, image, args.timeout, slots)
                                         for image in args.images))
    for ok, text in results:  # in the order given, whichever finished first
        print(text, file=sys.stdout if ok else sys.stderr)
    return 0 if all(ok for ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
