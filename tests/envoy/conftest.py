from __future__ import annotations

import pytest

from detect_stack.stack import stack


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    """TLS stack with generous limits: Envoy, two proxies, two localtriton replicas."""
    with stack(tmp_path_factory.mktemp("stack")) as s:
        yield s
