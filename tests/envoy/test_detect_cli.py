"""The `detect` command (detect-client) against the TLS front door: many images, globs,
stdin, JSON Lines with the proto's field names, drawn boxes, models, and one-line errors;
folders as DetectBatch calls and as DetectStream segments; the README's "Batches and
streams" snippets, run as printed."""

from __future__ import annotations

import io
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from PIL import Image, ImageChops

from detect.v1 import detect_pb2, detect_pb2_grpc
from detect_client import detect_batch
from detect_client.cli import Progress
from detect_proxy.contract import DETECT_BATCH, DETECT_STREAM, SERVICE
from detect_stack.grpcurl import GRPCURL
from detect_stack.promtext import scrape, value
from detect_stack.servers import ROOT, TESTDATA, free_port

DETECT = str(Path(sys.executable).parent / "detect")
ASTRONAUT = str(TESTDATA / "astronaut.png")


def detect(edge, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    front = ["--target", edge.envoy.front, "--ca-file", str(edge.envoy.certs / "ca.crt")]
    return subprocess.run([DETECT, *args, *front], input=stdin, capture_output=True,
                          timeout=120)


def test_many_images_from_a_glob_as_text(edge):
    out = detect(edge, str(TESTDATA / "*.png"))
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode()
    pngs = sorted(TESTDATA.glob("*.png"))
    assert [line.split(":")[0] for line in text.splitlines() if not line.startswith(" ")] == [
        str(p) for p in pngs]
    assert f"{ASTRONAUT}: 512x512, model face_detector v1, 1 detection(s)" in text
    assert "\n  face 0.9" in text
    assert out.stderr == b""


def test_json_lines_with_the_protos_field_names_and_every_field(edge):
    out = detect(edge, "--json", ASTRONAUT, str(TESTDATA / "coffee.png"))
    assert out.returncode == 0, out.stderr
    astronaut, coffee = (json.loads(line) for line in out.stdout.decode().splitlines())
    assert astronaut["image"] == ASTRONAUT and astronaut["model"] == "face_detector"
    assert set(astronaut) == {"image", "detections", "model", "model_version", "image_width",
                              "image_height", "variant"}
    [face] = astronaut["detections"]
    assert face["class_id"] == 0 and face["label"] == "face"  # zero values are present
    assert set(face["box"]) == {"x_min", "y_min", "x_max", "y_max"}
    assert coffee["detections"] == [] and coffee["image_width"] > 0


def test_an_image_from_stdin(edge):
    out = detect(edge, "-", stdin=Path(ASTRONAUT).read_bytes())
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().startswith("-: 512x512, model face_detector v1, 1 detection(s)")


def test_draw_writes_each_image_with_its_boxes(edge, tmp_path):
    out = detect(edge, "--draw", str(tmp_path / "drawn"), ASTRONAUT)
    assert out.returncode == 0, out.stderr
    drawn_path = tmp_path / "drawn" / "astronaut.png"
    assert f"drawn: {drawn_path}" in out.stdout.decode()
    with Image.open(ASTRONAUT) as original, Image.open(drawn_path) as drawn:
        assert drawn.size == original.size
        changed = ImageChops.difference(original.convert("RGB"), drawn.convert("RGB")).getbbox()
    reply = json.loads(detect(edge, "--json", ASTRONAUT).stdout)
    box = reply["detections"][0]["box"]
    assert changed is not None  # the box and its caption, around the face
    left, top, right, bottom = changed
    assert left <= box["x_min"] + 1 and right >= box["x_max"] - 1 and bottom >= box["y_max"] - 1


def test_models(edge):
    out = detect(edge, "models")
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().startswith("face_detector (default): versions 1; labels face;")


def test_a_missing_file_is_one_line_and_the_others_still_run(edge):
    out = detect(edge, "nope.png", ASTRONAUT)
    assert out.returncode == 1
    assert out.stderr.decode() == "detect: nope.png: no such file\n"
    assert "1 detection(s)" in out.stdout.decode()


def test_a_grpc_error_is_one_line_with_status_and_message(edge):
    out = detect(edge, "--model", "cat_detector", ASTRONAUT)
    assert out.returncode == 1
    assert out.stderr.decode() == (
        f"detect: {ASTRONAUT}: NOT_FOUND: model 'cat_detector' is not served; "
        "available models: face_detector, null_detector\n")
    not_an_image = detect(edge, "-", stdin=b"hello")
    assert not_an_image.stderr.decode().startswith("detect: -: INVALID_ARGUMENT: image format")


def test_nothing_listening_is_one_line(edge):
    out = subprocess.run([DETECT, ASTRONAUT, "--target", f"127.0.0.1:{free_port()}",
                          "--ca-file", str(edge.envoy.certs / "ca.crt"), "--timeout", "2"],
                         capture_output=True, timeout=60)
    assert out.returncode == 1
    [line] = out.stderr.decode().splitlines()
    assert line.startswith(f"detect: {ASTRONAUT}: UNAVAILABLE: ")
    assert "Traceback" not in out.stderr.decode()


def test_the_progress_bar_shows_on_a_terminal_only():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    shown = Terminal()
    bar = Progress(4, shown)
    for _ in range(4):
        bar.step()
    assert "[###############...............] 2/4" in shown.getvalue()
    assert shown.getvalue().endswith("\r")  # cleared when done
    hidden = io.StringIO()
    for _ in range(4):
        Progress(4, hidden).step()
    assert hidden.getvalue() == ""


def _folder(tmp_path: Path, count: int = 20, bad: int = 7) -> Path:
    """Numbered frames (distinct 64x48 PNGs), one of them not an image, and a hidden file
    that is left out."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(count):
        path = folder / f"frame_{i:03d}.png"
        if i == bad:
            path.write_bytes(b"hello, not an image")
        else:
            Image.new("RGB", (64, 48), (i * 10, 0, 7)).save(path)
    (folder / ".DS_Store").write_bytes(b"not a frame")
    return folder


def _calls(edge, method: str) -> float:
    """Calls of ``method`` Envoy's front has passed to the proxies."""
    return value(scrape(edge.envoy.admin_port, "/stats/prometheus"), "envoy_cluster_grpc_total",
                 envoy_cluster_name="detect_proxy", envoy_grpc_bridge_service=SERVICE,
                 envoy_grpc_bridge_method=method)


def _bad_line(folder: Path) -> str:
    return f"detect: {folder / 'frame_007.png'}: INVALID_ARGUMENT: image format"


def test_batch_sends_a_folder_in_calls_of_16_and_reports_the_bad_file(edge, tmp_path):
    folder = _folder(tmp_path)
    before = _calls(edge, DETECT_BATCH)
    out = detect(edge, "batch", str(folder))
    assert out.returncode == 1
    text = out.stdout.decode()
    headers = [line for line in text.splitlines() if not line.startswith(" ")]
    assert headers == [f"{folder / f'frame_{i:03d}.png'}: 64x48, model face_detector v1, "
                       "0 detection(s)" for i in range(20) if i != 7]
    [line] = out.stderr.decode().splitlines()
    assert line.startswith(_bad_line(folder))
    assert _calls(edge, DETECT_BATCH) == before + 2  # 19 images read: 16, then 3



def test_batch_stays_under_the_fronts_request_limit(edge, tmp_path):
    """16 images within the proxy's 8 MiB limit can be more than the 64 MiB Envoy's front
    takes in one DetectBatch: the command splits batches by bytes too."""
    side = (1600, 1300)  # incompressible noise: a PNG of about 6.2 MB
    noise = Image.frombytes("RGB", side, random.Random(0).randbytes(side[0] * side[1] * 3))
    buffer = io.BytesIO()
    noise.save(buffer, "PNG", compress_level=1)
    folder = tmp_path / "large"
    folder.mkdir()
    for i in range(12):
        (folder / f"large_{i:02d}.png").write_bytes(buffer.getvalue())
    with edge.envoy.channel() as channel, pytest.raises(grpc.RpcError) as whole:
        detect_batch(detect_pb2_grpc.DetectorStub(channel), [buffer.getvalue()] * 12,
                     timeout=60)
    assert whole.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request is larger than the limit" in whole.value.details()
    before = _calls(edge, DETECT_BATCH)
    out = detect(edge, "batch", "--json", str(folder))
    assert out.returncode == 0, out.stderr
    answers = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert [(a["image_width"], a["image_height"]) for a in answers] == [side] * 12
    assert _calls(edge, DETECT_BATCH) == before + 2


def test_stream_sends_frames_in_name_order_as_streams_of_a_segment(edge, tmp_path):
    folder = _folder(tmp_path)
    before = _calls(edge, DETECT_STREAM)
    out = detect(edge, "stream", "--json", "--segment", "8", str(folder))
    assert out.returncode == 1
    answers = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert [a["image"] for a in answers] == [str(folder / f"frame_{i:03d}.png")
                                             for i in range(20)]
    assert [a["error"]["code"] for a in answers if "error" in a] == ["INVALID_ARGUMENT"]
    assert all(a["image_width"] == 64 for a in answers if "error" not in a)
    [line] = out.stderr.decode().splitlines()
    assert line.startswith(_bad_line(folder))
    assert _calls(edge, DETECT_STREAM) == before + 3  # 20 frames: 8, 8, 4


def test_stream_as_text_with_a_missing_file(edge):
    out = detect(edge, "stream", ASTRONAUT, "nope.png", str(TESTDATA / "coffee.png"))
    assert out.returncode == 1
    assert out.stderr.decode() == "detect: nope.png: no such file\n"
    text = out.stdout.decode()
    assert text.startswith(f"{ASTRONAUT}: 512x512, model face_detector v1, 1 detection(s)\n"
                           "  face 0.9")
    assert f"\n{TESTDATA / 'coffee.png'}: " in text


def _readme_blocks(language: str) -> list[str]:
    """The code blocks of the README's "Batches and streams" section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Batches and streams\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"^```{language}\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)


def _as_here(edge, text: str) -> str:
    """A README snippet aimed at this stack's front door and CA instead of `make run`'s."""
    return (text.replace("localhost:8443", f"localhost:{edge.envoy.front.rsplit(':', 1)[1]}")
            .replace("build/certs/ca.crt", str(edge.envoy.certs / "ca.crt")))


def test_readme_batches_and_streams_commands(edge):
    """The section's commands, as printed, from the repository root."""
    grpcurl, cli = _readme_blocks("sh")
    env = {**os.environ, "PATH": f"{Path(GRPCURL).parent}:{Path(DETECT).parent}:"
                                 f"{os.environ['PATH']}"}
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", _as_here(edge, grpcurl)], cwd=ROOT,
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    # grpcurl prints each answer as indented JSON, its opening brace on a line of its own.
    starts = [m.start() for m in re.finditer(r"^\{$", out.stdout, re.MULTILINE)]
    batch, *stream = (json.JSONDecoder().raw_decode(out.stdout, at)[0] for at in starts)
    astronaut, coffee = batch["results"]
    assert astronaut["response"]["detections"][0]["label"] == "face"
    assert coffee["response"]["image_width"] > 0
    pngs = sorted(str(p.relative_to(ROOT)) for p in TESTDATA.glob("*.png"))
    assert [s["id"] for s in stream] == pngs
    assert all("response" in s["result"] for s in stream)
    env.update(DETECT_TARGET=_as_here(edge, "localhost:8443"),
               DETECT_CA_FILE=str(edge.envoy.certs / "ca.crt"))
    for command in cli.splitlines():
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=ROOT,
                             capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "build/testdata/astronaut.png" in out.stdout and "face" in out.stdout


def test_readme_batches_and_streams_python(edge, monkeypatch, capsys):
    [snippet] = _readme_blocks("python")
    monkeypatch.chdir(ROOT)  # the paths are relative to the root, as under `make run`
    namespace: dict = {}
    try:
        exec(_as_here(edge, snippet), namespace)
    finally:
        if "channel" in namespace:
            namespace["channel"].close()
    lines = capsys.readouterr().out.splitlines()
    with edge.envoy.channel() as channel:  # what Detect finds in each, one at a time
        stub = detect_pb2_grpc.DetectorStub(channel)
        found = {p.name: stub.Detect(detect_pb2.DetectRequest(image=p.read_bytes()),
                                     timeout=30).detections
                 for p in sorted(TESTDATA.glob("*.png"))}
    expected = [f"{name} {len(detections)}" for name, detections in found.items()]
    assert lines == expected * 2  # the batch, then the stream
    assert len(found["astronaut.png"]) == 1
