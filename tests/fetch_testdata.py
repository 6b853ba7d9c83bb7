"""Fetch the test images from the scikit-image wheel (its ``skimage/data`` folder).

Only the wheel is downloaded (no dependencies, nothing installed); the few images the tests
use are extracted into build/testdata, and phone-camera-like JPEGs are made from them
(detect_stack.phone_photos).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from detect_stack import phone_photos

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ("astronaut.png", "coffee.png", "rocket.jpg", "chelsea.png", "camera.png",
          "motorcycle_left.png")


def main() -> int:
    downloads = ROOT / "build" / "downloads"
    target = ROOT / "build" / "testdata"
    if all((target / name).is_file() for name in IMAGES):
        phone_photos.make(target)
        return 0
    wheels = sorted(downloads.glob("scikit_image-*.whl"))
    if not wheels:
        downloads.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--only-binary=:all:", "--dest", str(downloads), "scikit-image"],
                       check=True)
        wheels = sorted(downloads.glob("scikit_image-*.whl"))
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheels[-1]) as zf:
        for name in IMAGES:
            (target / name).write_bytes(zf.read(f"skimage/data/{name}"))
    print(f"extracted {len(IMAGES)} images from {wheels[-1].name} into {target}")
    phone_photos.make(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
