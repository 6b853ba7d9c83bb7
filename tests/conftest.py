from __future__ import annotations

from collections.abc import Iterator

import pytest

from servers import TESTDATA, localtriton


@pytest.fixture(scope="session")
def triton_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One localtriton with default (Triton's) flags, shared by the whole session."""
    with localtriton(tmp_path_factory.mktemp("localtriton")) as (url, _):
        yield url


@pytest.fixture(scope="session")
def images() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(TESTDATA.iterdir())}
