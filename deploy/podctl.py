#!/usr/bin/env python3
"""Small operations commands for the containers: health checks, Envoy drain, admin reads.

The images carry no curl or grpc_health_probe, and the proxy, its metrics and Envoy's admin
interface listen on loopback only, so probes, the container HEALTHCHECK and the preStop
drain run inside the pod (or the Compose service's network namespace) with this script:

    podctl.py health --target 127.0.0.1:50051 --service detect.v1.Detector   # readiness
    podctl.py health --target 127.0.0.1:50051 --any-status                    # liveness
    podctl.py drain --admin 127.0.0.1:9901 --wait-s 5                         # preStop
    podctl.py admin /clusters                                                 # operators
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request

# Envoy drains callers (HTTP/2 GOAWAY, then closes the listener after its --drain-time-s)
# and keeps the egress to Triton, so calls already admitted still complete.
DRAIN_PATH = "/drain_listeners?graceful&inboundonly"


def health(target: str, service: str, timeout_s: float, any_status: bool) -> int:
    """0 when the server answers SERVING (or, with any_status, answers at all): liveness
    must not follow Triton's readiness, or a Triton outage would restart every proxy."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            print(f"{target}: {exc.code().name} {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{target} {service or '(server)'}: {status}")
    return 0 if any_status or reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def admin(address: str, path: str, method: str = "GET", timeout_s: float = 5.0) -> str:
    request = urllib.request.Request(f"http://{address}{path}", method=method)
    with urllib.request.urlopen(request, timeout=timeout_s) as reply:
        return reply.read().decode(errors="replace")


def drain(address: str, wait_s: float) -> int:
    """preStop of the proxy container: Envoy tells callers to go away, then the proxy keeps
    serving for wait_s (endpoint removal, in-flight calls on drained connections) before the
    kubelet sends it SIGTERM and its own drain (--drain-delay-s, --shutdown-grace-s) begins."""
    try:
        admin(address, DRAIN_PATH, method="POST")
        print(f"Envoy at {address}: inbound listeners draining")
    except (OSError, urllib.error.URLError) as exc:
        # Envoy already gone: nothing to drain, and the proxy's own shutdown still runs.
        print(f"Envoy at {address} not reachable ({exc}); not drained", file=sys.stderr)
    time.sleep(wait_s)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="podctl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    h = sub.add_parser("health", help="gRPC health Check; exit 0 when SERVING")
    h.add_argument("--target", default="127.0.0.1:50051")
    h.add_argument("--service", default="", help="health service name ('' = whole server)")
    h.add_argument("--timeout-s", type=float, default=2.0)
    h.add_argument("--any-status", action="store_true",
                   help="exit 0 on any answer, SERVING or not (liveness)")
    d = sub.add_parser("drain", help="drain Envoy's inbound listeners, then wait")
    d.add_argument("--admin", default="127.0.0.1:9901", help="Envoy admin host:port")
    d.add_argument("--wait-s", type=float, default=5.0)
    a = sub.add_parser("admin", help="GET a path of Envoy's admin interface and print it")
    a.add_argument("path", help="e.g. /clusters, /stats?filter=grpc")
    a.add_argument("--admin", default="127.0.0.1:9901", help="Envoy admin host:port")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "health":
        return health(args.target, args.service, args.timeout_s, args.any_status)
    if args.command == "drain":
        return drain(args.admin, args.wait_s)
    print(admin(args.admin, args.path), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
