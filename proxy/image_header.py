"""Identify an encoded image and read its size from the header, without decoding it.

The proxy forwards images untouched; this is its cheap gate. Reading a few header bytes
rejects non-images, oversized images and decompression bombs before they cost the model
server anything. Formats: JPEG (SOF markers, plus EXIF orientation), PNG (IHDR), WebP
(VP8, VP8L, VP8X) and BMP (core and info headers).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import contract


class ImageRejected(ValueError):
    """The image cannot be accepted; the message is safe to show to the caller."""


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int   # as displayed, after EXIF orientation
    height: int


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = contract.MAX_IMAGE_BYTES
    max_width: int = contract.MAX_IMAGE_WIDTH
    max_height: int = contract.MAX_IMAGE_HEIGHT


# JPEG start-of-frame markers carry the frame size (C4 DHT, C8 JPG and CC DAC do not).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD9)}  # TEM, RSTn, SOI: no length field


def _jpeg_orientation(app1: bytes | memoryview) -> int:
    """EXIF orientation tag (1..8) from an APP1 payload, 1 when absent or unreadable."""
    app1 = bytes(app1)  # at most 64 KiB
    if not app1.startswith(b"Exif\x00\x00") or len(app1) < 14:
        return 1
    tiff = app1[6:]
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return 1
    try:
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, ifd)
        for i in range(count):
            tag, kind, _, value = struct.unpack_from(order + "HHI4s", tiff, ifd + 2 + 12 * i)
            if tag == 0x0112 and kind == 3:  # SHORT
                (orientation,) = struct.unpack_from(order + "H", value)
                return orientation if 1 <= orientation <= 8 else 1
    except struct.error:
        return 1
    return 1


def _jpeg(data: bytes | memoryview) -> tuple[int, int]:
    pos, orientation = 2, 1
    n = len(data)
    while pos < n:
        if data[pos] != 0xFF:
            raise ImageRejected("JPEG is corrupt: expected a marker in its header")
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            break
        marker = data[pos]
        pos += 1
        if marker in _STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # EOI or start of scan before any frame header
            raise ImageRejected("JPEG has no frame header (SOF) before its image data")
        if pos + 2 > n:
            break
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2:
            raise ImageRejected("JPEG is corrupt: invalid segment length")
        if marker in _SOF:
            if pos + 7 > n:
                break
            height, width = struct.unpack_from(">HH", data, pos + 3)
            if orientation >= 5:  # 5..8 rotate by 90 degrees
                width, height = height, width
            return width, height
        if marker == 0xE1:
            orientation = _jpeg_orientation(data[pos + 2:pos + length])
        pos += length
    raise ImageRejected("JPEG is truncated before its frame header (SOF)")


def _png(data: bytes | memoryview) -> tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ImageRejected("PNG is truncated or corrupt: no IHDR header")
    return struct.unpack_from(">II", data, 16)


def _webp(data: bytes | memoryview) -> tuple[int, int]:
    chunk = data[12:16]
    body = 20
    if chunk == b"VP8 ":
        if len(data) < body + 10 or data[body + 3:body + 6] != b"\x9d\x01\x2a":
            raise ImageRejected("WebP (VP8) is truncated or corrupt")
        w, h = struct.unpack_from("<HH", data, body + 6)
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":
        if len(data) < body + 5 or data[body] != 0x2F:
            raise ImageRejected("WebP (VP8L) is truncated or corrupt")
        (bits,) = struct.unpack_from("<I", data, body + 1)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        if len(data) < body + 10:
            raise ImageRejected("WebP (VP8X) is truncated")
        w = int.from_bytes(data[body + 4:body + 7], "little") + 1
        h = int.from_bytes(data[body + 7:body + 10], "little") + 1
        return w, h
    raise ImageRejected("WebP has an unknown first chunk")


def _bmp(data: bytes | memoryview) -> tuple[int, int]:
    if len(data) < 26:
        raise ImageRejected("BMP is truncated: no DIB header")
    (header_size,) = struct.unpack_from("<I", data, 14)
    if header_size == 12:  # BITMAPCOREHEADER
        return struct.unpack_from("<HH", data, 18)
    if header_size < 40:
        raise ImageRejected("BMP has an unknown DIB header")
    width, height = struct.unpack_from("<ii", data, 18)
    return width, abs(height)  # negative height: top-down rows


def sniff(data: bytes | memoryview) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM":
        return "BMP"
    return None


_READERS = {"JPEG": _jpeg, "PNG": _png, "WEBP": _webp, "BMP": _bmp}


def inspect(data: bytes | memoryview, limits: ImageLimits) -> ImageInfo:
    """Check an encoded image against the limits; raise ImageRejected with a precise reason."""
    size = len(data)
    if size == 0:
        raise ImageRejected("image is empty")
    if size > limits.max_bytes:
        raise ImageRejected(f"image is {size} bytes; the limit is {limits.max_bytes} bytes")
    kind = sniff(data)
    if kind is None:
        raise ImageRejected("image format is not recognised; send JPEG, PNG, WebP or BMP")
    width, height = _READERS[kind](data)
    if width <= 0 or height <= 0:
        raise ImageRejected(f"{kind} header declares an empty image ({width}x{height})")
    if width > limits.max_width or height > limits.max_height:
        raise ImageRejected(
            f"image is {width}x{height}; the limit is {limits.max_width}x{limits.max_height}")
    return ImageInfo(kind, width, height)
