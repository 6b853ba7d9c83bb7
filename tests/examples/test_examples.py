"""The programs in examples/ work as their README says: each runs, as a caller would run it,
against one `make run` stack and through its front door (Envoy, TLS; mTLS on a second Envoy
in front of the same proxies), and prints real detections."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from detect_stack.grpcurl import GRPCURL
from detect_stack.makerun import MakeRun, make_run
from detect_stack.servers import LOCALTRITON, ROOT
from detect_stack.stack import admin_get, envoy

EXAMPLES = ROOT / "examples"
CERTS = ROOT / "build" / "certs"
ASTRONAUT = "build/testdata/astronaut.png"  # one face; paths as a caller at the root types them
OTHERS = ["build/testdata/coffee.png", "build/testdata/rocket.jpg", "build/testdata/camera.png"]
# "  face 0.934 [x_min, y_min, x_max, y_max]", as both Python examples print a detection
DETECTION = re.compile(r"^  (\S+) (\d\.\d+) \[([-\d., ]+)\]$", re.MULTILINE)


def run_example(*args: str, env: dict[str, str] | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a command from the repository root, where the examples' defaults point."""
    return subprocess.run(list(args), cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeRun]:
    with make_run(tmp_path_factory.mktemp("make-run"), LOCALTRITON) as run:
        yield run


@pytest.fixture(scope="module")
def front(stack: MakeRun) -> str:
    return f"localhost:{stack.ports['FRONT_PORT']}"


@pytest.fixture(scope="module")
def mtls_front(stack: MakeRun, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An Envoy in mTLS mode (clients alpha and beta allowed) with `make run`'s certificates,
    in front of `make run`'s proxies."""
    ports = stack.ports
    with envoy(tmp_path_factory.mktemp("mtls"), CERTS,
               [f"127.0.0.1:{ports['PROXY1_PORT']}", f"127.0.0.1:{ports['PROXY2_PORT']}"],
               [f"127.0.0.1:{ports['TRITON1_PORT']}", f"127.0.0.1:{ports['TRITON2_PORT']}"],
               mtls=True, allowed_clients=["alpha", "beta"]) as edge:
        yield f"localhost:{edge.front.rsplit(':', 1)[1]}"


def front_counters(stack: MakeRun) -> tuple[int, int]:
    """Connections and requests Envoy's front listener has accepted so far."""
    text = admin_get(int(stack.ports["ADMIN_PORT"]),
                     "/stats?filter=^http.front.downstream_(cx|rq)_total$")
    stats = dict(line.split(": ") for line in text.splitlines())
    return (int(stats["http.front.downstream_cx_total"]),
            int(stats["http.front.downstream_rq_total"]))


def one_face(text: str) -> tuple[float, list[float]]:
    [(label, score, box)] = DETECTION.findall(text)
    assert label == "face" and float(score) > 0.5, text
    return float(score), [float(v) for v in box.split(", ")]


def test_python_sync_over_tls(stack, front):
    before = front_counters(stack)
    # Only the target is given: the CA is the default, build/certs/ca.crt.
    out = run_example(sys.executable, "examples/python/detect_tls.py", ASTRONAUT,
                      "--target", front)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^model face_detector \(default\): labels face; versions 1;", out.stdout,
                     re.MULTILINE), out.stdout
    assert f"{ASTRONAUT}: 512x512, face_detector v1, 1 detection(s)" in out.stdout
    _, (x_min, y_min, x_max, y_max) = one_face(out.stdout)
    assert 0 <= x_min < x_max <= 512 and 0 <= y_min < y_max <= 512
    after = front_counters(stack)
    assert (after[0] - before[0], after[1] - before[1]) == (1, 2)  # one channel, two calls


@pytest.mark.parametrize("client", ["alpha", "beta"])
def test_python_sync_over_mtls(mtls_front, client):
    out = run_example(sys.executable, "examples/python/detect_tls.py", ASTRONAUT,
                      "--target", mtls_front,
                      "--cert", f"build/certs/client-{client}.crt",
                      "--key", f"build/certs/client-{client}.key")
    assert out.returncode == 0, out.stderr
    assert "model face_detector (default)" in out.stdout
    one_face(out.stdout)


def test_the_detect_command_over_mtls(mtls_front):
    """detect-client's command: the same certificates, the same answers."""
    detect = str(Path(sys.executable).parent / "detect")
    alpha = run_example(detect, ASTRONAUT, "--target", mtls_front,
                        "--cert-file", "build/certs/client-alpha.crt",
                        "--key-file", "build/certs/client-alpha.key")
    assert alpha.returncode == 0, alpha.stderr
    assert f"{ASTRONAUT}: 512x512, model face_detector v1, 1 detection(s)" in alpha.stdout
    mallory = run_example(detect, ASTRONAUT, "--target", mtls_front, "--timeout", "5",
                          "--cert-file", "build/certs/client-mallory.crt",
                          "--key-file", "build/certs/client-mallory.key")
    assert mallory.returncode == 1
    assert mallory.stderr.splitlines()[-1].startswith(f"detect: {ASTRONAUT}: PERMISSION_DENIED: ")


@pytest.mark.parametrize(("certificate", "status"), [
    ([], "UNAVAILABLE"),  # no client certificate: the handshake fails
    (["--cert", "build/certs/client-mallory.crt", "--key", "build/certs/client-mallory.key"],
     "PERMISSION_DENIED"),  # a valid certificate outside the allowlist
])
def test_python_sync_refused_by_mtls(mtls_front, certificate, status):
    out = run_example(sys.executable, "examples/python/detect_tls.py", ASTRONAUT,
                      "--target", mtls_front, "--timeout", "5", *certificate)
    assert out.returncode == 1
    # The example's own line comes last (gRPC's C core may log the TLS alert before it).
    assert out.stderr.splitlines()[-1].startswith(f"{status}: "), out.stderr
    assert "Traceback" not in out.stderr


def test_python_asyncio_over_tls(stack, front):
    images = [ASTRONAUT, *OTHERS]
    before = front_counters(stack)
    out = run_example(sys.executable, "examples/python/detect_asyncio.py", *images,
                      "--ca", "build/certs/ca.crt", env={"DETECT_TARGET": front})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "models: face_detector, object_detector (default face_detector)"
    # Results come in the order the images were given, one header line each.
    headers = [line.split(":")[0] for line in lines[1:] if not line.startswith("  ")]
    assert headers == images
    astronaut = out.stdout.split(f"{ASTRONAUT}: ", 1)[1].split(f"{OTHERS[0]}: ", 1)[0]
    assert astronaut.startswith("512x512, 1 detection(s)")
    one_face(astronaut)
    after = front_counters(stack)
    # Every call, ListModels and one Detect per image, on one connection.
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1 + len(images))


def test_python_asyncio_reports_a_bad_image_and_keeps_the_others(front, tmp_path):
    bad = tmp_path / "not-an-image.png"
    bad.write_bytes(b"hello")
    out = run_example(sys.executable, "examples/python/detect_asyncio.py", str(bad), ASTRONAUT,
                      "--target", front)
    assert out.returncode == 1
    assert f"{bad}: INVALID_ARGUMENT: " in out.stderr
    one_face(out.stdout)


@pytest.fixture(scope="module")
def node_modules() -> None:
    """`npm ci` from the committed lock file, as a caller would install the Node example."""
    npm = shutil.which("npm")
    assert npm, "npm is not installed (Node.js 20 with npm is needed for examples/node)"
    try:
        out = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=EXAMPLES / "node",
                             capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("npm ci in examples/node took over 180 s: is the npm registry reachable?")
    if out.returncode != 0:
        pytest.fail("npm ci in examples/node failed (is the npm registry reachable?):\n"
                    + out.stderr[-3000:])


def test_node_over_tls(front, node_modules):
    node = shutil.which("node")
    assert node, "node is not installed"
    out = run_example(node, "examples/node/detect.js", ASTRONAUT, "--target", front)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    model, objects = result["models"]["models"]
    assert model["name"] == "face_detector" == result["models"]["default_model"]
    assert objects["name"] == "object_detector" and objects["versions"] == ["1", "2"]
    assert model["labels"] == ["face"] and model["limits"]["max_bytes"] == str(8 * 1024 * 1024)
    detection = result["detection"]
    assert (detection["image_width"], detection["image_height"]) == (512, 512)
    [face] = detection["detections"]  # keepCase: the proto's own field names
    assert face["label"] == "face" and face["class_id"] == 0 and face["score"] > 0.5
    box = face["box"]
    assert 0 <= box["x_min"] < box["x_max"] <= 512 and 0 <= box["y_min"] < box["y_max"] <= 512


def test_node_reports_the_status(front, node_modules):
    node = shutil.which("node")
    assert node, "node is not installed"
    out = run_example(node, "examples/node/detect.js", "README.md", "--target", front)
    assert out.returncode == 1
    assert out.stderr.startswith("INVALID_ARGUMENT: "), out.stderr


def test_grpcurl_script(front):
    assert Path(GRPCURL).exists(), "grpcurl is installed by the dev extras"
    out = run_example("bash", "examples/grpcurl.sh", ASTRONAUT,
                      env={"DETECT_TARGET": front, "GRPCURL": GRPCURL})
    assert out.returncode == 0, out.stderr
    assert "detect.v1.Detector" in out.stdout.splitlines()  # list
    assert "rpc ListModels ( .detect.v1.ListModelsRequest )" in out.stdout  # describe
    assert "bytes image = 1;" in out.stdout
    # Then two JSON answers, each starting on a line of its own: ListModels and Detect.
    starts = [m.start() for m in re.finditer(r"^\{$", out.stdout, re.MULTILINE)]
    decoder = json.JSONDecoder()
    models, detection = (decoder.raw_decode(out.stdout, start)[0] for start in starts)
    assert [m["name"] for m in models["models"]] == ["face_detector", "object_detector"]
    [face] = detection["detections"]
    assert face["label"] == "face" and face["score"] > 0.5


def calling_detect_blocks(language: str) -> list[str]:
    """The README's "Calling Detect" code blocks in ``language``."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Calling Detect\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"^```{language}\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)


def test_readme_commands_go_through_the_front_door(front):
    """The README's commands, as printed, with only `make run`'s port and the image swapped
    for this stack's."""
    blocks = calling_detect_blocks("sh")
    assert len(blocks) == 2
    for block in blocks:
        assert "localhost:8443" in block and "-plaintext" not in block
        script = (block.replace("localhost:8443", front).replace("photo.jpg", ASTRONAUT)
                  .replace("grpcurl ", f"{GRPCURL} "))
        out = run_example("bash", "-euo", "pipefail", "-c", script,
                          env={"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
        assert out.returncode == 0, out.stderr
        assert '"label": "face"' in out.stdout or "face 0.9" in out.stdout, out.stdout


def test_readme_python_snippet(front, monkeypatch):
    [snippet] = calling_detect_blocks("python")
    assert "grpc.secure_channel" in snippet and "timeout=" in snippet
    monkeypatch.chdir(ROOT)  # the CA path is relative to the root, as under `make run`
    namespace: dict = {}
    exec(snippet.replace("localhost:8443", front), namespace)
    try:
        [face] = namespace["faces"]((ROOT / ASTRONAUT).read_bytes())
        assert face.label == "face" and face.score > 0.6
    finally:
        namespace["channel"].close()


def test_readme_node_snippet(front, node_modules, tmp_path):
    [snippet] = calling_detect_blocks("js")
    assert "createSsl" in snippet and "deadline" in snippet
    script = tmp_path / "snippet.js"
    script.write_text(snippet.replace("localhost:8443", front))
    out = run_example("node", str(script),
                      env={"NODE_PATH": str(EXAMPLES / "node" / "node_modules")})
    assert out.returncode == 0, out.stderr
    [face] = json.loads(out.stdout)
    assert face["label"] == "face" and face["score"] > 0.6 and face["class_id"] == 0
