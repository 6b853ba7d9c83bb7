"""The `detect` command (detect-client) against the TLS front door: many images, globs,
stdin, JSON Lines with the proto's field names, drawn boxes, models, and one-line errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageChops

from detect_client.cli import Progress
from detect_stack.servers import TESTDATA, free_port

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
                              "image_height"}
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
