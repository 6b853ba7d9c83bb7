"""Header parsing against images encoded by Pillow, and against crafted hostile headers."""

from __future__ import annotations

import struct
import zlib
from io import BytesIO

import pytest
from PIL import Image

from detect_proxy.image_header import ImageLimits, ImageRejected, inspect

LIMITS = ImageLimits()


def encode(fmt: str, size=(123, 45), mode="RGB", **options) -> bytes:
    buffer = BytesIO()
    color = (10, 20, 30) if mode == "RGB" else None
    Image.new(mode, size, color).save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt,options,kind", [
    ("JPEG", {}, "JPEG"),
    ("JPEG", {"progressive": True}, "JPEG"),
    ("PNG", {}, "PNG"),
    ("WEBP", {"lossless": False}, "WEBP"),   # VP8
    ("WEBP", {"lossless": True}, "WEBP"),    # VP8L
    ("BMP", {}, "BMP"),
])
def test_sizes_of_real_encodings(fmt, options, kind):
    info = inspect(encode(fmt, **options), LIMITS)
    assert (info.format, info.width, info.height) == (kind, 123, 45)


def test_webp_extended_header():
    exif = Image.Exif()
    exif[0x010F] = "maker"
    data = encode("WEBP", exif=exif)
    assert data[12:16] == b"VP8X"
    assert (inspect(data, LIMITS).width, inspect(data, LIMITS).height) == (123, 45)


def test_bmp_top_down_and_core_headers():
    data = bytearray(encode("BMP"))
    struct.pack_into("<i", data, 22, -45)  # negative height: rows stored top-down
    assert inspect(bytes(data), LIMITS).height == 45
    core = b"BM" + b"\x00" * 12 + struct.pack("<IHHHH", 12, 300, 200, 1, 24)
    assert (inspect(core, LIMITS).width, inspect(core, LIMITS).height) == (300, 200)


def test_jpeg_exif_orientation_swaps_displayed_size():
    exif = Image.Exif()
    exif[0x0112] = 6
    info = inspect(encode("JPEG", exif=exif), LIMITS)
    assert (info.width, info.height) == (45, 123)


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))


@pytest.mark.parametrize("data,message", [
    (b"", "image is empty"),
    (b"GIF89a....", "not recognised"),
    (b"hello world", "not recognised"),
    (_png_header(8000, 6000), "image is 8000x6000; the limit is 4096x4096"),
    (_png_header(0, 10), "empty image (0x10)"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "no IHDR"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "truncated before its frame header"),
    (b"\xff\xd8\xff\xda\x00\x08", "no frame header"),
    (b"\xff\xd8\xff\xc0\x00\x11\x08" + struct.pack(">HH", 5000, 100), "image is 100x5000"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WebP (VP8) is truncated"),
    (b"RIFF\x00\x00\x00\x00WEBPABCD" + b"\x00" * 20, "unknown first chunk"),
    (b"BM\x00", "BMP is truncated"),
])
def test_rejections_are_precise(data, message):
    with pytest.raises(ImageRejected) as err:
        inspect(data, LIMITS)
    assert message in str(err.value)


def test_byte_limit():
    limits = ImageLimits(max_bytes=100)
    with pytest.raises(ImageRejected, match="image is 101 bytes; the limit is 100 bytes"):
        inspect(_png_header(10, 10) + b"\x00" * (101 - 33), limits)
