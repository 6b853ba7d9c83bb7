"""Fixtures of the deployment tests (readers live in deployfiles.py, beside this file)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from detect_deploy.manifests import DEPLOY, K8S, envoy_config  # noqa: E402


@pytest.fixture(scope="session")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


@pytest.fixture(scope="session")
def k8s_envoy() -> dict:
    return envoy_config(K8S / "envoy" / "envoy.yaml")


@pytest.fixture(scope="session")
def compose_envoy() -> dict:
    return envoy_config(DEPLOY / "compose" / "envoy.yaml")


@pytest.fixture(scope="session")
def dev_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A TLS directory as deploy/configs.py tls-dir --dev prepares it."""
    from detect_deploy import configs

    out = tmp_path_factory.mktemp("tls")
    configs.tls_dir(out, None, None, ["localhost", "127.0.0.1"], group_id=-1)
    yield out
