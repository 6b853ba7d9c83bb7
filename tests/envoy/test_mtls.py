"""mTLS mode: a certificate from the CA is required, and an allowlist decides who may call."""

from __future__ import annotations

import json
import time

import grpc
import pytest

from detect.v1 import detect_pb2, detect_pb2_grpc, operations_pb2, operations_pb2_grpc
from detect_stack.stack import envoy


@pytest.fixture(scope="module")
def mtls(tmp_path_factory, edge):
    """A second Envoy, in mTLS mode, in front of the same proxies."""
    proxies = [target for target, _ in edge.proxies]
    tritons = [url for url, _ in edge.tritons]
    with envoy(tmp_path_factory.mktemp("mtls"), edge.envoy.certs, proxies, tritons,
               mtls=True, allowed_clients=["alpha", "beta"], operator_clients=["beta"]) as e:
        yield e


def _detect(channel, image: bytes) -> detect_pb2.DetectResponse:
    return detect_pb2_grpc.DetectorStub(channel).Detect(detect_pb2.DetectRequest(image=image),
                                                       timeout=10)


def test_no_client_certificate_fails(mtls, images):
    with mtls.channel(client=None) as channel:
        with pytest.raises(grpc.RpcError) as err:
            _detect(channel, images["coffee.png"])
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("client", ["alpha", "beta"])
def test_allowed_identity_succeeds(mtls, images, client):
    with mtls.channel(client=client) as channel:
        assert len(_detect(channel, images["astronaut.png"]).detections) == 1


def test_identity_outside_the_allowlist_is_permission_denied(mtls, images):
    with mtls.channel(client="mallory") as channel:
        with pytest.raises(grpc.RpcError) as err:
            _detect(channel, images["coffee.png"])
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_client_identity_comes_from_the_certificate_not_a_header(mtls, images):
    with mtls.channel(client="alpha") as channel:
        detect_pb2_grpc.DetectorStub(channel).Detect(
            detect_pb2.DetectRequest(image=images["coffee.png"]), timeout=10,
            metadata=[("x-client-id", "spoofed")])
    path = mtls.process.log_path.parent / f"access-{mtls.front.rsplit(':', 1)[1]}.log"
    deadline = time.monotonic() + 5  # Envoy flushes access logs periodically
    while True:
        entries = [json.loads(line) for line in path.read_text().splitlines()
                   if line.startswith("{")]
        clients = {e["client"] for e in entries if e["listener"] == "front"}
        if "spiffe://detect.local/client/alpha" in clients or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert "spiffe://detect.local/client/alpha" in clients
    assert "spoofed" not in clients


def _list_groups(channel) -> grpc.StatusCode:
    try:
        operations_pb2_grpc.OperationsStub(channel).ListGroups(
            operations_pb2.ListGroupsRequest(), timeout=10)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_only_operator_identities_reach_the_operations_service(mtls, edge):
    with mtls.channel(client="beta") as channel:
        assert _list_groups(channel) == grpc.StatusCode.OK
    with mtls.channel(client="alpha") as channel:  # a caller of the Detector, no operator
        assert _list_groups(channel) == grpc.StatusCode.PERMISSION_DENIED
    with edge.envoy.channel() as channel:  # TLS without client identities: no one
        assert _list_groups(channel) == grpc.StatusCode.PERMISSION_DENIED
