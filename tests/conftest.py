from __future__ import annotations

from collections.abc import Iterator

import pytest

from servers import TESTDATA, localtriton, proxy


@pytest.fixture(scope="session")
def triton_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One localtriton with default (Triton's) flags, shared by the whole session."""
    with localtriton(tmp_path_factory.mktemp("localtriton")) as (url, _):
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
