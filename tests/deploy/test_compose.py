"""deploy/compose.yaml is a valid Compose file, checked offline.

`docker compose config` needs the Compose plugin, which a machine with only Python, pip,
gcc and git lacks; where it is installed it is used too. Otherwise the file is validated
against the Compose Specification's JSON schema as vendored in the check-jsonschema
package (check_jsonschema/builtin_schemas/vendor/compose-spec.json, from the
compose-spec project), with the jsonschema package.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from importlib import resources

import jsonschema
import pytest
import yaml

from detect_deploy.manifests import DEPLOY


def compose_schema() -> dict:
    path = resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    return json.loads(path.read_text())


def errors(document: dict) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
            for e in validator.iter_errors(document)]


def test_compose_file_validates_against_the_compose_spec(compose):
    assert errors(compose) == []
    assert set(compose["services"]) == {"models", "triton-gpu-a", "triton-gpu-b", "envoy",
                                        "proxy", "prometheus", "redis"}


def test_the_schema_check_rejects_mistakes(compose):
    broken = copy.deepcopy(compose)
    broken["services"]["proxy"]["restart_policy"] = "always"  # not a service key
    assert errors(broken)
    broken = copy.deepcopy(compose)
    device = broken["services"]["triton-gpu-a"]["deploy"]["resources"]["reservations"][
        "devices"][0]
    device["drivers"] = device.pop("driver")  # misspelt
    assert errors(broken)
    broken = copy.deepcopy(compose)
    broken["services"]["proxy"]["depends_on"]["triton-gpu-a"]["condition"] = "service_ready"
    assert errors(broken)


def test_services_run_unprivileged_read_only_with_pinned_images(compose):
    for name, service in compose["services"].items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), name
        assert service.get("read_only") is True, name
        if name != "prometheus":  # the Prometheus image's own user is 'nobody'
            assert not service["user"].startswith("0"), name
    base = (DEPLOY / "triton.Dockerfile").read_text()
    assert "nvcr.io/nvidia/tritonserver:${TRITON_TAG}-py3" in base
    tritons = [s for n, s in compose["services"].items() if n.startswith("triton")]
    assert len(tritons) == 2 and len({t["image"] for t in tritons}) == 1
    for triton in tritons:
        assert triton["build"]["dockerfile"] == "deploy/triton.Dockerfile"
        tag = triton["build"]["args"]["TRITON_TAG"]
        assert f"ARG TRITON_TAG={tag}" in base
        assert triton["image"].endswith(":" + tag)


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client")
def test_docker_compose_config_accepts_it_when_the_plugin_is_installed(tmp_path):
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker client has no compose plugin")
    result = subprocess.run(["docker", "compose", "-f", str(DEPLOY / "compose.yaml"), "config",
                             "--no-interpolate", "--quiet"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


def test_compose_yaml_is_plain_yaml():
    """No anchors or merge keys: what the schema saw is what Compose reads."""
    text = (DEPLOY / "compose.yaml").read_text()
    assert "<<:" not in text and "&" not in text.replace("&&", "")
    assert yaml.safe_load(text)["name"] == "detect"
