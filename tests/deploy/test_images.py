"""The Dockerfiles follow the project's rules, and the dependency locks match pyproject.

No Docker engine is needed: the Dockerfile is read instruction by instruction, its sources
checked against the repository, its HEALTHCHECK parsed by podctl's own parser.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex

from detect_deploy import lock, podctl
from detect_deploy.manifests import DEPLOY, argv, container, find

ROOT = DEPLOY.parent


def instructions(path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        word, _, rest = text.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages(path) -> dict[str, list[tuple[str, str]]]:
    result: dict[str, list[tuple[str, str]]] = {}
    current = None
    for word, rest in instructions(path):
        if word == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            result[current] = [(word, rest)]
        elif current:
            result[current].append((word, rest))
    return result


DOCKERFILE = DEPLOY / "Dockerfile"


def test_base_image_is_a_pinned_slim_python_311():
    args = dict(rest.split("=", 1) for word, rest in instructions(DOCKERFILE)
                if word == "ARG" and "=" in rest)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", args["PYTHON_IMAGE"]), args["PYTHON_IMAGE"]
    for name, body in stages(DOCKERFILE).items():
        base = body[0][1].split(" AS ")[0].strip()
        assert base == "${PYTHON_IMAGE}" or base in stages(DOCKERFILE), (name, base)


def test_shipped_stages_run_as_an_unprivileged_user_and_copy_no_build_tools():
    s = stages(DOCKERFILE)
    for target in ("proxy", "localtriton", "models"):
        body = s[target]
        users = [rest for word, rest in body if word == "USER"]
        assert users and users[-1].split(":")[0] not in ("0", "root"), target
        copied_from = {re.search(r"--from=(\S+)", rest).group(1)
                       for word, rest in body if word == "COPY" and "--from=" in rest}
        # Only finished artefacts: a venv or the model repository, never the build stage.
        assert copied_from <= {"proxy-venv", "localtriton-venv", "models-build"}, target
        assert body[0][1].startswith("runtime"), target  # the slim base, without compilers


def test_dependencies_come_from_the_locks_without_resolution():
    pips = [rest for word, rest in instructions(DOCKERFILE)
            if word == "RUN" and "pip install" in rest]
    for run in pips:
        for command in run.split("&&"):
            if "pip install" in command:
                assert "--no-deps" in command, command
                assert re.search(r"-r deploy/requirements/\w+\.txt|/wheels/\*\.whl",
                                 command), command
    assert lock.problems() == [], lock.problems()


def test_stubs_are_generated_by_the_wheel_build():
    runs = " ".join(rest for word, rest in instructions(DOCKERFILE) if word == "RUN")
    assert "pip wheel --no-deps --no-build-isolation" in runs
    assert "detect/v1/detect_pb2_grpc.py" in runs  # the build fails without the stubs
    copies = [rest for word, rest in instructions(DOCKERFILE) if word == "COPY"]
    assert not any(re.search(r"(^|\s)detect/", c) for c in copies), "stubs are never copied in"


def test_copy_sources_exist_and_pass_the_dockerignore():
    ignore = [line for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
              if line and not line.startswith("#")]

    def included(path: str) -> bool:
        keep = True
        for pattern in ignore:
            negate = pattern.startswith("!")
            pattern = pattern.lstrip("!").rstrip("/")
            if pattern == "**" or fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
                keep = negate
        return keep

    for word, rest in instructions(DOCKERFILE):
        if word != "COPY" or "--from=" in rest:
            continue
        sources = [a for a in shlex.split(rest) if not a.startswith("--")][:-1]
        for source in sources:
            matches = sorted(ROOT.glob(source.rstrip("/")))
            assert matches, source
            for match in matches:
                path = match.relative_to(ROOT).as_posix()
                assert included(path), f"{path} is excluded from the build context"


def test_healthchecks_and_probes_use_podctl_where_the_image_puts_it():
    s = stages(DOCKERFILE)
    for target in ("proxy", "localtriton"):
        [copy] = [rest for word, rest in s[target] if word == "COPY" and "podctl" in rest]
        assert copy.split()[-1] == "/opt/venv/bin/podctl" and "--chmod=0755" in copy
        [check] = [rest for word, rest in s[target] if word == "HEALTHCHECK"]
        command = check.split(" CMD ", 1)[1]
        args = json.loads(command)
        assert args[0] == "podctl"
        parsed = podctl.build_parser().parse_args(args[1:])
        assert parsed.command == "health"
    proxy = container(find("Deployment", "detect-proxy"), "proxy")
    for command in (proxy["livenessProbe"]["exec"]["command"],
                    proxy["lifecycle"]["preStop"]["exec"]["command"]):
        assert command[0] == "/opt/venv/bin/podctl"
    [entrypoint] = [rest for word, rest in s["proxy"] if word == "ENTRYPOINT"]
    assert argv(proxy)[0] == entrypoint.strip('[]"')


def test_models_image_feeds_triton_on_the_gpu():
    s = stages(DOCKERFILE)
    runs = " ".join(rest for word, rest in s["models-build"] if word == "RUN")
    assert "fetch_models.py" in runs
    assert "KIND_CPU/kind: ${INSTANCE_KIND}/\" model_repository/centerface/config.pbtxt" in runs
    assert "ARG INSTANCE_KIND=KIND_GPU" in (DEPLOY / "Dockerfile").read_text()
    config = (ROOT / "model_repository" / "centerface" / "config.pbtxt").read_text()
    assert "kind: KIND_CPU" in config  # what the sed rewrites
    triton = instructions(DEPLOY / "triton.Dockerfile")
    assert any(word == "USER" and rest != "root" for word, rest in triton)
    assert any(word == "RUN" and re.search(r"Pillow==\d", rest) for word, rest in triton)
