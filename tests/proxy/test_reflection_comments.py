"""Server reflection serves the proto's comments: `grpcurl describe` shows the API's
documentation, as written in protos/, to a caller who has no proto files."""

from __future__ import annotations

import subprocess

from google.protobuf import descriptor_pb2, descriptor_pool

from detect_proxy import reflection
from detect_stack.grpcurl import GRPCURL, comment_above


def describe(target: str, symbol: str, *tls: str) -> str:
    out = subprocess.run([GRPCURL, *(tls or ("-plaintext",)), target, "describe", symbol],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def assert_documented(target: str, *tls: str) -> None:
    service = describe(target, "detect.v1.Detector", *tls)
    for line in comment_above("service Detector") + comment_above("rpc Detect"):
        assert line in service, (line, service)
    request = describe(target, "detect.v1.DetectRequest", *tls)
    for line in comment_above("message DetectRequest") + comment_above("bytes image"):
        assert line in request, (line, request)


def test_describe_shows_the_proto_comments(proxy_target):
    assert_documented(proxy_target)


def test_health_and_reflection_are_still_listed(proxy_target):
    out = subprocess.run([GRPCURL, "-plaintext", proxy_target, "list"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert set(out.stdout.split()) >= {"detect.v1.Detector", "grpc.health.v1.Health",
                                       "grpc.reflection.v1alpha.ServerReflection"}
    out = subprocess.run([GRPCURL, "-plaintext", proxy_target, "describe",
                          "grpc.health.v1.Health"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "rpc Check" in out.stdout, out.stderr


def test_the_packaged_descriptor_set_matches_the_stubs():
    from detect.v1 import detect_pb2  # noqa: F401  (registers the compiled file)

    documented = reflection.documented_files()
    assert documented["detect/v1/detect.proto"].source_code_info.location
    pool = reflection.DocumentedPool(descriptor_pool.Default(), documented)
    served = descriptor_pb2.FileDescriptorProto()
    pool.FindFileContainingSymbol("detect.v1.Detector").CopyToProto(served)
    assert served.source_code_info.location, "served without comments"
    # The comments and nothing else: no json_name, so grpcurl keeps printing proto names.
    compiled = descriptor_pb2.FileDescriptorProto()
    descriptor_pool.Default().FindFileByName(served.name).CopyToProto(compiled)
    served.ClearField("source_code_info")
    assert served == compiled


def test_a_stale_descriptor_set_is_ignored():
    """Comments are placed by the position of each declaration: a set that no longer matches
    the compiled API is ignored (the API is served as compiled, without comments)."""
    from detect.v1 import detect_pb2  # noqa: F401

    stale = descriptor_pb2.FileDescriptorProto()
    stale.CopyFrom(reflection.documented_files()["detect/v1/detect.proto"])
    [request] = [m for m in stale.message_type if m.name == "DetectRequest"]
    request.field[0].number = 99
    pool = reflection.DocumentedPool(descriptor_pool.Default(), {stale.name: stale})
    served = descriptor_pb2.FileDescriptorProto()
    pool.FindFileByName(stale.name).CopyToProto(served)
    assert not served.source_code_info.location
    [field] = [f for m in served.message_type if m.name == "DetectRequest"
               for f in m.field if f.name == request.field[0].name]
    assert field.number != 99
