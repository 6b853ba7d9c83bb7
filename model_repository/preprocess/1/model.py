"""Decode, orient and letterbox encoded images for CenterFace.

Runs unchanged in Triton's Python backend (needs numpy and Pillow in its environment).
Each request's rows are decoded independently: a bad image fails only its own request,
with INVALID_ARG, never the other requests that share the execution.

JPEGs are decoded at reduced size in the DCT domain when the network needs fewer pixels
than the image has: at 12 MP that is most of this step's CPU.

Every pixel format a camera or an editor writes becomes 8-bit RGB as a viewer would show
it: 16-bit samples keep their 8 most significant bits (Pillow's plain conversion saturates
16-bit gray to white), transparency is composited over white, CMYK and palettes are
converted by Pillow.
"""

import io
import json
import re
import warnings

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image, ImageOps, UnidentifiedImageError

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")
# Pillow's modes for 16-bit (and 32-bit integer) single-channel images; PNG's 16-bit gray.
WIDE_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
BACKGROUND = (255, 255, 255, 255)
ORIENTATION = 0x0112  # the EXIF tag
TURNED = (5, 6, 7, 8)  # orientations that swap width and height for display
# Exception texts may name Python objects ("<_io.BytesIO object at 0x7f...>"): callers
# get the words, not the reprs.
_REPR = re.compile(r"\s*<[^<>]*\bat 0x[0-9a-fA-F]+>")


def _reason(exc):
    return _REPR.sub("", str(exc)).strip() or type(exc).__name__


def to_rgb(image):
    """8-bit RGB, as the image is meant to look."""
    if image.mode in WIDE_GRAY_MODES:
        wide = np.asarray(image).astype(np.uint32)
        image = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), "L")
    if "A" in image.getbands() or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, BACKGROUND), rgba)
    return image if image.mode == "RGB" else image.convert("RGB")


class ImageRejected(Exception):
    pass


class Decoder:
    """Decoding to fit a square network input, with the checks every detector applies.

    object_detector loads this file and decodes with it too, so that both detectors accept
    and refuse the same images with the same messages.
    """

    def __init__(self, size, max_pixels):
        if size <= 0 or size % 32:
            raise ValueError(f"network_input_size must be a positive multiple of 32, got {size}")
        self.size = size
        self.max_pixels = max_pixels

    def decode(self, data, row):
        """The image as displayed, resized to fit the network input, and its full size;
        ImageRejected says why an image cannot be."""
        image = self._open(bytes(data), row)
        try:
            return self._decode_to_fit(image)
        except Exception as exc:  # truncated or corrupt data surfaces while decoding
            raise ImageRejected(f"image {row} could not be decoded ({_reason(exc)})") from None

    def _open(self, data, row):
        if not data:
            raise ImageRejected(f"image {row} is empty")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            # Pillow's own guard, at a higher bound than ours, fired on the header alone.
            raise ImageRejected(
                f"image {row} is too large to decode ({exc}); the limit is "
                f"{self.max_pixels} pixels") from None
        except UnidentifiedImageError:
            raise ImageRejected(
                f"image {row} is not a decodable JPEG, PNG, WebP or BMP image") from None
        except Exception as exc:
            raise ImageRejected(
                f"image {row} is not a decodable JPEG, PNG, WebP or BMP image "
                f"({_reason(exc)})") from None
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ImageRejected(f"image {row} has no pixels ({width}x{height})")
        if width * height > self.max_pixels:
            raise ImageRejected(
                f"image {row} is {width}x{height} ({width * height} pixels); the limit is "
                f"{self.max_pixels} pixels")
        return image

    def _decode_to_fit(self, image):
        """The image as displayed, resized to fit the network input, and its full size."""
        width, height = image.size
        turned = image.getexif().get(ORIENTATION, 1) in TURNED
        if turned:
            width, height = height, width
        scale = self.size / max(width, height)
        fit = (max(1, min(self.size, round(width * scale))),
               max(1, min(self.size, round(height * scale))))
        # A JPEG decodes at 1/2, 1/4 or 1/8 of its size in the DCT domain for a fraction of
        # the full decode's CPU (a sixth for a 12 MP photo): ask libjpeg for the smallest
        # scale still at least the network input, then resize once. Other formats ignore it.
        image.draft("RGB", fit[::-1] if turned else fit)
        ImageOps.exif_transpose(image, in_place=True)  # a copy of 12 MP costs 50 ms
        # Formats without DCT scaling (PNG, WebP) are first reduced by whole factors to
        # at least twice the target, which halves the resize of a large image.
        return to_rgb(image).resize(fit, Image.BILINEAR, reducing_gap=2.0), (width, height)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.decoder = Decoder(int(params.get("network_input_size", "512")),
                               int(params.get("max_image_pixels", str(4096 * 4096))))

    def execute(self, requests):
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            try:
                rows = [self._prepare(images[i].reshape(-1)[0], i) for i in range(images.shape[0])]
            except ImageRejected as exc:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)))
                continue
            pixels = np.stack([r[0] for r in rows])
            letterbox = np.stack([r[1] for r in rows])
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("input", pixels),
                pb_utils.Tensor("letterbox", letterbox),
            ]))
        return responses

    def _prepare(self, data, row):
        resized, (width, height) = self.decoder.decode(data, row)
        size = self.decoder.size
        canvas = np.zeros((3, size, size), dtype=np.float32)
        canvas[:, : resized.height, : resized.width] = np.asarray(
            resized, dtype=np.float32).transpose(2, 0, 1)
        return canvas, np.array([size / max(width, height), width, height], dtype=np.float32)
