from __future__ import annotations

from collections.abc import Iterator

import pytest

from detect_stack.servers import BACKENDS, TESTDATA, proxy, triton_server


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Which Triton server a protocol-facing test runs against: every such test runs on
    localtriton and on the genuine tritonserver (select one with -k tritonserver or
    -k 'not tritonserver')."""
    return request.param


@pytest.fixture(scope="session")
def triton_url(tmp_path_factory: pytest.TempPathFactory, backend: str) -> Iterator[str]:
    """One server of ``backend`` with default (Triton's) flags, shared by the session."""
    with triton_server(backend, tmp_path_factory.mktemp(backend)) as (url, _):
        yield url


@pytest.fixture(scope="session")
def images() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(TESTDATA.iterdir())}


@pytest.fixture(scope="session")
def proxy_server(tmp_path_factory: pytest.TempPathFactory, triton_url: str):
    """One proxy in front of the session's localtriton: (target, process)."""
    with proxy(tmp_path_factory.mktemp("proxy"), triton_url) as (target, proc):
        yield target, proc


@pytest.fixture(scope="session")
def proxy_target(proxy_server) -> str:
    return proxy_server[0]


@pytest.fixture(scope="session")
def detector(proxy_target: str):
    import grpc

    from detect.v1 import detect_pb2_grpc

    with grpc.insecure_channel(proxy_target) as channel:
        yield detect_pb2_grpc.DetectorStub(channel)
