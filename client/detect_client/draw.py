"""Boxes and labels drawn onto the caller's image (``detect --draw``).

Pillow is an optional extra (``pip install 'detect-client[draw]'``): a service calling
Detect needs only grpcio and protobuf. Boxes are in the coordinates of the image as
displayed, after EXIF orientation, so the image is turned the same way before drawing.
"""

from __future__ import annotations

import io
from pathlib import Path

from detect.v1 import detect_pb2

COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6")


class MissingPillow(OSError):
    pass


def require_pillow() -> None:
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise MissingPillow("--draw needs Pillow: pip install 'detect-client[draw]'") from None


def output_path(directory: Path, source: str, image_format: str | None) -> Path:
    if source == "-":
        return directory / f"stdin.{(image_format or 'png').lower()}"
    return directory / Path(source).name


def draw(image: bytes, response: detect_pb2.DetectResponse, directory: Path,
         source: str) -> Path:
    """Write ``image`` with ``response``'s boxes into ``directory``; the path written."""
    from PIL import Image, ImageDraw, ImageOps

    with Image.open(io.BytesIO(image)) as opened:
        image_format = opened.format
        picture = ImageOps.exif_transpose(opened).convert("RGB")
    pen = ImageDraw.Draw(picture)
    width = max(2, round(max(picture.size) / 300))
    for d in response.detections:
        colour = COLOURS[d.class_id % len(COLOURS)]
        box = (d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max)
        pen.rectangle(box, outline=colour, width=width)
        caption = f"{d.label or d.class_id} {d.score:.2f}"
        left, top = d.box.x_min, max(0.0, d.box.y_min - 12 - width)
        text_box = pen.textbbox((left, top), caption)
        pen.rectangle(text_box, fill=colour)
        pen.text((left, top), caption, fill="white")
    directory.mkdir(parents=True, exist_ok=True)
    path = output_path(directory, source, image_format)
    picture.save(path, format=image_format if image_format in ("JPEG", "PNG", "WEBP", "BMP")
                 else "PNG")
    return path
