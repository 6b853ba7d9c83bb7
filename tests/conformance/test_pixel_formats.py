"""Every pixel format a camera or an editor writes gives the detections that a correct 8-bit
conversion of the same picture gives. The reference conversions are computed here with
numpy, then sent as plain 8-bit RGB PNGs through the same model."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image

from detect_stack import reference_centerface as reference
from detect_stack.detector_client import detections, image_input

WHITE = 255.0


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _png16_rgb(rgb16: np.ndarray) -> bytes:
    """A 16-bit-per-sample RGB PNG (Pillow does not write them), written by hand."""
    height, width, _ = rgb16.shape
    rows = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255.0
    return np.round(rgb.astype(np.float64) * a + WHITE * (1 - a)).astype(np.uint8)


def _variants(astronaut: bytes) -> dict[str, tuple[bytes, np.ndarray]]:
    """name -> (encoded image in that format, its reference 8-bit RGB pixels)."""
    rgb = np.asarray(Image.open(io.BytesIO(astronaut)).convert("RGB"))
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    height, width = gray.shape
    # Transparent where x > 3/4 of the width, half transparent in the band before it. Under
    # the transparent pixels lies a second copy of the face, which a conversion that drops
    # the alpha channel would show.
    alpha = np.full((height, width), 255, np.uint8)
    alpha[:, width // 2: 3 * width // 4] = 128
    alpha[:, 3 * width // 4:] = 0
    under = rgb.copy()
    under[:, 3 * width // 4:] = 0
    under[58:178, 400:489] = rgb[58:178, 181:270]  # the face, moved into hiding
    out: dict[str, tuple[bytes, np.ndarray]] = {}

    gray16 = gray.astype(np.uint16) * 257
    out["16-bit gray PNG"] = (_png(Image.fromarray(gray16)), np.stack([gray] * 3, -1))
    out["16-bit colour PNG"] = (_png16_rgb(rgb.astype(np.uint16) * 257), rgb)
    hidden_gray = np.asarray(Image.fromarray(under).convert("L"))
    out["gray + alpha PNG"] = (_png(Image.fromarray(np.stack([hidden_gray, alpha], -1), "LA")),
                               _over_white(np.stack([hidden_gray] * 3, -1), alpha))
    out["RGBA PNG"] = (_png(Image.fromarray(np.dstack([under, alpha]), "RGBA")),
                       _over_white(under, alpha))
    palette = Image.fromarray(rgb).quantize(255)
    indices = np.asarray(palette).copy()
    indices[:, 3 * width // 4:] = 255  # a palette entry of its own, marked transparent
    transparent = Image.fromarray(indices, "P")
    transparent.putpalette(palette.getpalette()[:255 * 3] + [0, 0, 0])
    buffer = io.BytesIO()
    transparent.save(buffer, format="PNG", transparency=255)
    lookup = np.array(palette.getpalette()[:255 * 3] + [0, 0, 0], np.uint8).reshape(-1, 3)
    out["palette PNG with transparency"] = (buffer.getvalue(), _over_white(
        lookup[indices], np.where(indices == 255, 0, 255).astype(np.uint8)))
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buffer, format="JPEG", quality=95)
    cmyk = np.asarray(Image.open(io.BytesIO(buffer.getvalue()))).astype(np.float64)
    k = 255.0 - cmyk[..., 3:]
    out["CMYK JPEG"] = (buffer.getvalue(),
                        np.round((255.0 - cmyk[..., :3]) * k / 255.0).astype(np.uint8))
    return out


@pytest.fixture(scope="module")
def client(triton_url: str):
    with grpcclient.InferenceServerClient(triton_url) as c:
        yield c


@pytest.fixture(scope="module")
def variants(images):
    return _variants(images["astronaut.png"])


@pytest.mark.parametrize("name", ["16-bit gray PNG", "16-bit colour PNG", "gray + alpha PNG",
                                  "RGBA PNG", "palette PNG with transparency", "CMYK JPEG"])
def test_format_gives_the_detections_of_its_8_bit_conversion(client, variants, name):
    encoded, pixels = variants[name]
    converted = _png(Image.fromarray(pixels, "RGB"))
    result = client.infer("face_detector", [image_input(encoded, converted)])
    found, expected = detections(result, 0), detections(result, 1)
    assert len(expected.boxes) == 1, "the reference conversion shows the face"
    assert len(found.boxes) == len(expected.boxes), name
    for box, ref in zip(found.boxes, expected.boxes, strict=True):
        assert reference.iou(box, ref) >= 0.9, name
    np.testing.assert_allclose(found.scores, expected.scores, atol=0.05)
