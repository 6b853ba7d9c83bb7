"""The decoder comparison keeps working in the plain venv, where only Pillow is installed."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detect_loadtest import decoders

# The optional decoders and the module each needs; CI's venv has none of them.
OPTIONAL = {"simplejpeg": "simplejpeg", "turbojpeg": "turbojpeg", "opencv": "cv2"}


def test_small_run_measures_pillow_and_reports_missing_decoders(tmp_path: Path) -> None:
    assert decoders.main(["--seconds", "0.2", "--rounds", "2", "--out", str(tmp_path),
                          "--sizes", "512", "--photos", "phone-1mp.jpg"]) == 0
    data = json.loads((tmp_path / "decoders.json").read_text())
    assert data["command"].endswith(
        "python -m detect_loadtest.decoders --seconds 0.2 --rounds 2 "
        f"--out {tmp_path} --sizes 512 --photos phone-1mp.jpg")
    status = {a["name"]: a["status"] for a in data["alternatives"]}
    for name, module in OPTIONAL.items():
        if importlib.util.find_spec(module) is None:
            assert status[name] == "not installed"
    rows = {r["alternative"]: r for r in data["results"]}
    assert set(rows) == {name for name, s in status.items() if s == "measured"}
    for name in ("pillow-full", "pillow-draft"):
        row = rows[name]
        assert (row["photo"], row["size"]) == ("phone-1mp.jpg", 512)
        assert row["cpu_ms_per_image"] > 0 and row["calls"] >= 3
        assert row["output_size"] == [512, 384]
    assert rows["pillow-full"]["decoded_size"] == [1152, 864]
    assert rows["pillow-draft"]["decoded_size"] == [576, 432]  # 1/2 scale, >= 512x384
    assert rows["pillow-full"]["accuracy_vs_full"]["identical"]
    draft = rows["pillow-draft"]["accuracy_vs_full"]
    assert 0 < draft["mean_abs_diff"] < 5 and draft["psnr_db"] > 30
    if decoders.MODEL.is_file():  # `make models` provides it wherever the suite runs
        assert rows["pillow-draft"]["faces"]["best_box_iou_vs_full"] > 0.8
    markdown = (tmp_path / "decoders.md").read_text()
    assert "| pillow-draft |" in markdown and data["command"] in markdown


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_every_alternative_turns_the_image_upright(orientation: int) -> None:
    pixels = np.zeros((240, 320, 3), dtype=np.uint8)
    pixels[:120, :160] = 255  # a white top-left quadrant
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, exif=exif)
    data = buffer.getvalue()
    expected = decoders.pillow_full(data, 64)
    for alternative in decoders.ALTERNATIVES:
        loaded = decoders.load(alternative)
        if loaded.decode is None:
            continue
        result = loaded.decode(data, 64, None)
        assert result.shape == expected.shape, alternative.name
        assert np.abs(result.astype(int) - expected.astype(int)).mean() < 8, alternative.name
