"""Phone-camera-like JPEGs made from the test images, for the preprocessing benchmarks.

Real callers send phone photos: 4:3 JPEGs of 1 to 12 megapixels, 1-3 MB at 12 MP, with
sensor noise that keeps them from compressing like a clean upscale would. These are built
deterministically from scikit-image's test images (the astronaut, whose face the detector
finds, beside the coffee cup and the cat), so the same bytes come out on every machine.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

# name -> (width, height): a 12 MP sensor, and the 4 MP and 1 MP sizes phones offer.
SIZES = {"phone-12mp.jpg": (4032, 3024), "phone-4mp.jpg": (2304, 1728),
         "phone-1mp.jpg": (1152, 864)}
QUALITY = 88  # what phone cameras typically write, with 4:2:0 chroma subsampling
NOISE_SIGMA = 3.0  # sensor noise, in 8-bit levels


def _scene(testdata: Path, width: int, height: int) -> Image.Image:
    """The astronaut filling the left square, the coffee cup and the cat stacked on the right."""
    side = height
    right = width - side
    canvas = Image.new("RGB", (width, height))
    canvas.paste(Image.open(testdata / "astronaut.png").convert("RGB")
                 .resize((side, side), Image.Resampling.BICUBIC), (0, 0))
    for i, name in enumerate(("coffee.png", "chelsea.png")):
        tile = Image.open(testdata / name).convert("RGB")
        box_h = height // 2
        scale = max(right / tile.width, box_h / tile.height)
        tile = tile.resize((round(tile.width * scale), round(tile.height * scale)),
                           Image.Resampling.BICUBIC)
        left, top = (tile.width - right) // 2, (tile.height - box_h) // 2
        canvas.paste(tile.crop((left, top, left + right, top + box_h)), (side, i * box_h))
    return canvas


def make(testdata: Path) -> dict[str, Path]:
    """Write the phone photos into ``testdata`` (once); returns their paths by name."""
    paths = {name: testdata / name for name in SIZES}
    if all(p.is_file() for p in paths.values()):
        return paths
    full_w, full_h = SIZES["phone-12mp.jpg"]
    pixels = np.asarray(_scene(testdata, full_w, full_h), dtype=np.float32)
    noise = np.random.default_rng(12).normal(0.0, NOISE_SIGMA, pixels.shape)
    sensor = Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))
    for name, size in SIZES.items():
        image = sensor if size == sensor.size else sensor.resize(size, Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=QUALITY, subsampling="4:2:0")
        paths[name].write_bytes(buffer.getvalue())
    return paths
