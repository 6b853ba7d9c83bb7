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


# ---- NanoDet: converted in a build-only stage, shipped only as models-build's files ----------

CONVERSION = "nanodet-build"
SHIPPED = ("proxy", "localtriton", "models")


def commands(body: list[tuple[str, str]]) -> list[list[str]]:
    """The shell commands of a stage's RUN instructions, each split into its words."""
    return [shlex.split(command) for word, rest in body if word == "RUN"
            for command in rest.split("&&")]


def parents(body: list[tuple[str, str]]) -> set[str]:
    """The stages (or images) a stage is built on or copies from."""
    base = body[0][1].split(" AS ")[0].strip()
    return {base} | {re.search(r"--from=(\S+)", rest).group(1)
                     for word, rest in body if word == "COPY" and "--from=" in rest}


def model_configs() -> dict[str, str]:
    return {p.parent.name: p.read_text()
            for p in sorted((ROOT / "model_repository").glob("*/config.pbtxt"))}


def test_every_pip_install_names_existing_locks():
    for words in commands([w for body in stages(DOCKERFILE).values() for w in body]):
        if not (words[0].endswith("/pip") and "install" in words):
            continue
        assert "--no-deps" in words, words
        for name in (words[i + 1] for i, word in enumerate(words) if word == "-r"):
            assert re.fullmatch(r"deploy/requirements/\w+\.txt", name), name
            assert (ROOT / name).is_file(), name


def test_nanodet_is_converted_by_its_own_locked_venv():
    s = stages(DOCKERFILE)
    body = s[CONVERSION]
    # Rebuilt only when what it copies changes, never from the code's `build` stage.
    assert body[0][1].split(" AS ")[0].strip() == "${PYTHON_IMAGE}"
    runs = commands(body)
    installs = {words[0]: [words[i + 1] for i, w in enumerate(words) if w == "-r"]
                for words in runs if words[0].endswith("/bin/pip") and "install" in words}
    [fetch] = [words for words in runs if "model_repository/fetch_nanodet.py" in words]
    flags = dict(zip(fetch[2::2], fetch[3::2], strict=True))
    # fetch_nanodet.py's own flags, and nothing it does not define.
    defined = set(re.findall(r'add_argument\("(--[\w-]+)"',
                             (ROOT / "model_repository" / "fetch_nanodet.py").read_text()))
    assert set(flags) <= defined and "--converter-python" in flags, flags
    converter = flags["--converter-python"].removesuffix("python") + "pip"
    assert installs[converter] == ["deploy/requirements/nanodet.txt"]
    # The script itself runs where numpy, onnx and onnxruntime are (as in the project's .venv).
    runner = fetch[0].removesuffix("python") + "pip"
    pins: dict[str, str] = {}
    for name in installs[runner]:
        pins |= lock.read_lock(ROOT / name)
    assert {"numpy", "onnx", "onnxruntime"} <= set(pins), installs[runner]
    # npm from the base image's Debian release.
    assert any({"apt-get", "install", "npm"} <= set(words) for words in runs)
    # What models-build takes from the stage is what the script writes.
    [copy] = [rest for word, rest in s["models-build"] if word == "COPY" and CONVERSION in rest]
    source, dest = shlex.split(copy)[1:]
    assert source.rstrip("/") == flags["--repository"] + "/nanodet"
    assert dest.rstrip("/") == "model_repository/nanodet"


def test_conversion_reaches_the_images_only_through_models_build():
    s = stages(DOCKERFILE)
    users = {name for name, body in s.items() if CONVERSION in parents(body)}
    assert users == {"models-build"}, users
    [copy] = [rest for word, rest in s["models-build"] if word == "COPY" and CONVERSION in rest]
    assert shlex.split(copy)[-1].startswith("model_repository/")  # the files, not its venvs
    for target in SHIPPED:  # directly or through any stage they are built on or copy from
        seen, pending = set(), [target]
        while pending:
            name = pending.pop()
            if name in seen or name not in s:
                continue
            seen.add(name)
            if name != "models-build":
                assert CONVERSION not in parents(s[name]), (target, name)
                pending += parents(s[name])


def test_models_stage_serves_every_network_on_the_instance_kind_and_ships_no_build_script():
    body = stages(DOCKERFILE)["models-build"]
    runs = commands(body)
    rewritten = {path for words in runs if words[:2] == ["sed", "-i"]
                 and words[2] == "s/kind: KIND_CPU/kind: ${INSTANCE_KIND}/" for path in words[3:]}
    configs = model_configs()
    networks = {name for name, text in configs.items()
                if re.search(r'platform: "onnxruntime_onnx"', text)}
    assert {"centerface", "nanodet"} <= networks
    # Every network's config, and only those: the Python-backend models stay on the CPU.
    assert rewritten == {f"model_repository/{name}/config.pbtxt" for name in networks}
    for name in networks:
        assert configs[name].count("kind: KIND_CPU") == 1, name  # what the sed rewrites
    # /models-cpu (localtriton) is copied before the rewrite, /models after it.
    flat = [" ".join(words) for words in runs]
    cpu = next(i for i, c in enumerate(flat) if c.startswith("cp -a model_repository /models-cpu"))
    sed = next(i for i, c in enumerate(flat) if c.startswith("sed -i"))
    assert cpu < sed
    # The build scripts and their requirements leave the repository served.
    removed = {path for words in runs if words[:2] == ["rm", "-f"] for path in words[2:]}
    build_files = {p.relative_to(ROOT).as_posix()
                   for p in (ROOT / "model_repository").iterdir() if p.is_file()}
    assert build_files and build_files <= removed, build_files - removed


def test_nanodet_versions_are_the_files_the_conversion_writes():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "fetch_nanodet", ROOT / "model_repository" / "fetch_nanodet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    policy = re.search(r"versions: \[([\d, ]+)\]", model_configs()["nanodet"]).group(1)
    assert set(module.VERSIONS) == {int(v) for v in policy.split(",")}
    # object_detector calls nanodet at its own versions and loads preprocess's and
    # postprocess's code by path: all of them are in the repository the images copy.
    detector = model_configs()["object_detector"]
    assert 'string_value: "nanodet"' in detector
    for name in ("object_detector", "nanodet", "preprocess", "postprocess"):
        assert (ROOT / "model_repository" / name / "config.pbtxt").is_file(), name


def test_nanodet_lock_satisfies_the_converter_requirements(tmp_path, monkeypatch):
    requirements = lock.requirements_file(lock.NANODET_REQUIREMENTS)
    assert lock.parts()["nanodet"] == requirements
    pins = lock.read_lock(lock.LOCK_DIR / "nanodet.txt")
    assert {"tensorflow-cpu", "tf2onnx", "numpy", "onnx"} <= set(pins)
    # problems() sees a lock that no longer satisfies the requirements file.
    for path in lock.LOCK_DIR.glob("*.txt"):
        (tmp_path / path.name).write_text(path.read_text())
    text = (tmp_path / "nanodet.txt").read_text()
    text = re.sub(r"(?m)^numpy==.*$", "numpy==2.0.0", text)
    text = re.sub(r"(?m)^tf2onnx==.*\n", "", text)
    (tmp_path / "nanodet.txt").write_text(text)
    monkeypatch.setattr(lock, "LOCK_DIR", tmp_path)
    found = lock.problems()
    assert any(p.startswith("nanodet.txt: numpy==2.0.0 does not satisfy") for p in found), found
    assert "nanodet.txt: tf2onnx is not pinned" in found, found


def test_a_venv_closure_is_computed_by_that_venv(capsys):
    import sys
    from pathlib import Path

    # The nanodet lock is read by build/nanodet-venv's interpreter; this one stands in for it.
    assert lock.venv_closure(Path(sys.executable), ["packaging"]) == lock.closure(["packaging"])
    assert lock.main(["--closure", "packaging"]) == 0
    assert json.loads(capsys.readouterr().out) == lock.closure(["packaging"])
