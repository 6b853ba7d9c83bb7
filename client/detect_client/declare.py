"""How DetectBatch and DetectStream say how many images they carry.

Envoy's rate limits charge a call for the images it names in the ``x-detect-images`` request
header when the call starts, before any image has arrived, and the proxy refuses a call
carrying more images than it declared (absent, the header counts one). The helpers of this
package set it on every call, so a service never spells it. The name is part of the
service's contract, defined by the proxy too; it is repeated here so that callers need not
install the server, and a test checks that the two agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

DECLARED_IMAGES_HEADER: Final = "x-detect-images"

# The server's default --max-batch-images: the most images one DetectBatch call may carry.
MAX_BATCH_IMAGES: Final = 16

Metadata = Sequence[tuple[str, str]]


def declaring(images: int, metadata: Metadata = ()) -> list[tuple[str, str]]:
    """``metadata`` plus the header declaring ``images``. A declaration the caller passed is
    dropped: the count belongs to the call, and a stale one would be charged or refused."""
    if images < 1:
        raise ValueError(f"a call declares at least one image, not {images}")
    kept = [(key, value) for key, value in metadata if key.lower() != DECLARED_IMAGES_HEADER]
    return [*kept, (DECLARED_IMAGES_HEADER, str(images))]
