"""Local rate limits at the front door: per client and global, changeable at run time."""

from __future__ import annotations

import grpc
import pytest

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_proxy.contract import DECLARED_IMAGES_HEADER
from detect_stack.stack import admin_get, admin_post, envoy

# Invalid (empty) images are answered fast by the proxy with INVALID_ARGUMENT, so a burst
# finishes well inside one refill interval and the limiter's answer is unambiguous.
EMPTY = detect_pb2.DetectRequest(image=b"")
LIMITS = dict(global_rps=1, global_burst=40, client_rps=1, client_burst=8)


@pytest.fixture()
def limited(tmp_path, edge):
    proxies = [target for target, _ in edge.proxies]
    tritons = [url for url, _ in edge.tritons]
    with envoy(tmp_path, edge.envoy.certs, proxies, tritons, **LIMITS) as e:
        yield e


def _burst(e, client: str | None, count: int) -> list[grpc.StatusCode]:
    """``count`` calls as ``client`` (``None``: anonymous, no x-client-id), their codes."""
    codes = []
    metadata = [("x-client-id", client)] if client is not None else []
    with e.channel() as channel:
        stub = detect_pb2_grpc.DetectorStub(channel)
        for _ in range(count):
            try:
                stub.Detect(EMPTY, timeout=5, metadata=metadata)
            except grpc.RpcError as err:
                codes.append(err.code())
    return codes


def _stat(e, name: str) -> int:
    for line in admin_get(e.admin_port, f"/stats?filter=^{name}$").splitlines():
        return int(line.split(":")[1])
    return 0


def test_per_client_bucket(limited):
    codes = _burst(limited, "alpha", 12)
    assert codes[:8] == [grpc.StatusCode.INVALID_ARGUMENT] * 8  # reached the proxy
    assert codes[9:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3
    # Another client has its own bucket.
    assert _burst(limited, "beta", 3) == [grpc.StatusCode.INVALID_ARGUMENT] * 3
    limited_count = _stat(limited, "ratelimit_standard.http_local_rate_limit.rate_limited")
    assert limited_count >= 3
    # Limited calls never reach a proxy and are not retried.
    assert _stat(limited, "cluster.detect_proxy.upstream_rq_retry") == 0
    assert _stat(limited, "cluster.detect_proxy.upstream_rq_total") == 15 - limited_count


def test_global_bucket(limited):
    codes = []
    for i in range(12):  # 12 clients x 4 calls: every client is within its own limit
        codes += _burst(limited, f"client-{i}", 4)
    assert codes.count(grpc.StatusCode.INVALID_ARGUMENT) <= 41
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 7
    assert set(codes) == {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_anonymous_callers_share_only_the_global_bucket(limited):
    """Without x-client-id no per-client bucket applies: anonymous calls go past the
    per-client burst (8) and are limited only by the global bucket (40), which they can
    use up for identified callers too."""
    codes = _burst(limited, None, 45)
    assert codes[:38] == [grpc.StatusCode.INVALID_ARGUMENT] * 38  # reached the proxy
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 3
    # The global bucket is empty: a client within its own burst is limited all the same.
    # (A refill of one token may land in between: at most one call gets through.)
    assert _burst(limited, "alpha", 3).count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 2


def test_runtime_tier_change_takes_effect_without_restart(limited):
    assert _burst(limited, "c1", 4) == [grpc.StatusCode.INVALID_ARGUMENT] * 4
    admin_post(limited.admin_port, "/runtime_modify?detect.ratelimit.reduced=100")
    codes = _burst(limited, "c2", 4)  # reduced tier: a quarter of the per-client burst
    assert codes[:2] == [grpc.StatusCode.INVALID_ARGUMENT] * 2
    assert codes[3] == grpc.StatusCode.RESOURCE_EXHAUSTED
    admin_post(limited.admin_port, "/runtime_modify?detect.ratelimit.reduced=0")
    assert _burst(limited, "c3", 4) == [grpc.StatusCode.INVALID_ARGUMENT] * 4


def _batch(stub, client: str, images: int, declared: int | None = None) -> grpc.StatusCode:
    metadata = [("x-client-id", client)]
    if declared is not None:
        metadata.append((DECLARED_IMAGES_HEADER, str(declared)))
    try:
        # Empty images: answered at once by the proxy, each with its own INVALID_ARGUMENT.
        stub.DetectBatch(detect_pb2.DetectBatchRequest(images=[b""] * images), timeout=10,
                         metadata=metadata)
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_rate_limits_count_the_images_a_call_declares(limited):
    with limited.channel() as channel:
        stub = detect_pb2_grpc.DetectorStub(channel)
        # The client's bucket holds 8 images: two batches of 3, then 3 more do not fit.
        assert [_batch(stub, "alpha", 3, 3) for _ in range(3)] == [
            grpc.StatusCode.OK, grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED]
        # Declaring less than it carries does not get a call past the limit: the proxy
        # refuses it.
        assert _batch(stub, "beta", 5, 1) == grpc.StatusCode.INVALID_ARGUMENT
        # Undeclared is one image.
        assert _batch(stub, "gamma", 1) == grpc.StatusCode.OK
        # A stream is charged at its start for what it declares.
        stream = stub.DetectStream(iter(()), timeout=10, metadata=[
            ("x-client-id", "delta"), (DECLARED_IMAGES_HEADER, "9")])
        with pytest.raises(grpc.RpcError) as error:
            list(stream)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
